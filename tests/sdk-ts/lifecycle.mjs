// The official TypeScript SDK's front door against the control plane, unchanged user code.
// DAYTONA_API_URL and DAYTONA_API_KEY come from the environment (the main job's banner).
// Prints one JSON object of what it observed; tests/test_controlplane_sdk_ts.py asserts on it.
import { Daytona } from '@daytonaio/sdk'

const out = {}
const daytona = new Daytona({ apiUrl: process.env.DAYTONA_API_URL, apiKey: process.env.DAYTONA_API_KEY })

const sandbox = await daytona.create({ language: 'python', labels: { suite: 'sdk-ts' } })
try {
  out.id = sandbox.id
  out.createdState = sandbox.state
  out.labels = sandbox.labels

  const run = await sandbox.process.codeRun('print(6 * 7)')
  out.codeRun = { exitCode: run.exitCode, result: run.result }
  const exec = await sandbox.process.executeCommand('echo "$((20 + 1))"')
  out.executeCommand = { exitCode: exec.exitCode, result: exec.result }

  await sandbox.fs.uploadFile(Buffer.from('hello from typescript\n'), 'notes/hello.txt')
  out.download = (await sandbox.fs.downloadFile('notes/hello.txt')).toString()

  const link = await sandbox.getPreviewLink(3000)
  out.preview = { url: link.url, hasToken: typeof link.token === 'string' && link.token.length > 0 }

  out.found = (await daytona.get(sandbox.id)).id
  out.listed = []
  for await (const item of daytona.list({ labels: { suite: 'sdk-ts' } })) out.listed.push(item.id)

  // The SDK's Socket.IO client (private field: the SDK offers no public accessor) should be
  // connected, so the stop wait below ends on the state event rather than on polling.
  for (let i = 0; i < 50 && !daytona.eventDispatcher?.isConnected; i++) await new Promise((r) => setTimeout(r, 100))
  out.eventsConnected = Boolean(daytona.eventDispatcher?.isConnected)
  const stopStarted = Date.now()
  await sandbox.stop()
  out.stopMs = Date.now() - stopStarted
  out.stoppedState = sandbox.state
  await sandbox.start()
  out.startedState = sandbox.state
  out.afterRestart = (await sandbox.process.executeCommand('cat notes/hello.txt')).result
} finally {
  await daytona.delete(sandbox)
}
try {
  await daytona.get(out.id)
  out.afterDelete = 'still found'
} catch (error) {
  out.afterDelete = error.constructor.name
}
try {
  await daytona.create({ snapshot: 'no-such-snapshot' })
  out.badSnapshot = 'created'
} catch (error) {
  out.badSnapshot = `${error.constructor.name}: ${error.message}`
}
console.log(JSON.stringify(out))
process.exit(0)
