package bench

import "syscall"

// sysProcAttr has the kernel stop a child whose bench dies without stopping
// it (SIGKILL, a crash): no mock or service is left running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
