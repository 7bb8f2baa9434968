# Sourced by scripts/start before scripts/venv.sh: what the main job needs from the system,
# checked in a second rather than after the minutes of the first pip install, with the exact
# command that installs what is missing.
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo "
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
# As root every sandbox drops to its own uid with setpriv.
[ "$(id -u)" != 0 ] || command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "error: the main job needs ${missing[*]}: ${sudo}apt-get install ${missing[*]}" >&2
  exit 1
fi
# Installed is not enough: the kernel (or a container around us) may refuse the namespaces.
userns=()
[ "$(id -u)" = 0 ] || userns=(--unshare-user)
if ! why=$(bwrap "${userns[@]}" --unshare-pid --unshare-net --ro-bind / / --proc /proc --dev /dev true 2>&1); then
  hint="run it as root, or allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 also kernel.apparmor_restrict_unprivileged_userns=0)"
  [ "$(id -u)" != 0 ] || hint="in a container, give it the privileges bubblewrap needs (e.g. docker run --privileged)"
  echo "error: bubblewrap cannot create a sandbox here (${why//$'\n'/ }): $hint" >&2
  exit 1
fi
