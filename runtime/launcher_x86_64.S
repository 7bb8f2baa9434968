/* The in-sandbox interpreter launcher (x86-64 Linux, no libc, position independent):
   execve(LOADER, [LOADER, "--library-path", LIBS, "--argv0", SELF, INTERP, argv[1..]], envp)
   so the daemon's interpreter runs on the host's loader and libraries whatever root it
   is in; exit status 127 when the exec fails. */
        .globl _start
        .text
_start:
        mov     (%rsp), %rcx            /* argc */
        lea     8(%rsp), %rsi           /* argv */
        lea     8(%rsi,%rcx,8), %rdx    /* envp: after argv's NULL */
        lea     7(%rcx), %rax           /* 6 fixed + argv[1..argc-1] + NULL <= argc + 7 */
        shl     $3, %rax
        sub     %rax, %rsp
        and     $-16, %rsp
        lea     loader(%rip), %rax
        mov     %rax, 0(%rsp)
        lea     opt_path(%rip), %rax
        mov     %rax, 8(%rsp)
        lea     libs(%rip), %rax
        mov     %rax, 16(%rsp)
        lea     opt_argv0(%rip), %rax
        mov     %rax, 24(%rsp)
        lea     self(%rip), %rax
        mov     %rax, 32(%rsp)
        lea     interp(%rip), %rax
        mov     %rax, 40(%rsp)
        lea     48(%rsp), %rdi          /* destination */
        lea     8(%rsi), %r8            /* &argv[1] */
        test    %rcx, %rcx
        jz      terminate               /* argc 0: no argv[1] to copy */
copy:
        mov     (%r8), %rax             /* argv[1] ... argv[argc] (the NULL) */
        mov     %rax, (%rdi)
        add     $8, %r8
        add     $8, %rdi
        dec     %rcx
        jnz     copy
        jmp     exec
terminate:
        movq    $0, (%rdi)
exec:
        lea     loader(%rip), %rdi
        mov     %rsp, %rsi
        mov     $59, %eax               /* execve */
        syscall
        mov     $127, %edi
        mov     $60, %eax               /* exit */
        syscall
loader:    .asciz "/opt/sandbox-toolbox/so/ld.so"
opt_path:  .asciz "--library-path"
libs:      .asciz "/opt/sandbox-toolbox/so:/opt/sandbox-toolbox/python/lib"
opt_argv0: .asciz "--argv0"
self:      .asciz "/opt/sandbox-toolbox/venv/bin/python"
interp:    .asciz "/opt/sandbox-toolbox/interp"
