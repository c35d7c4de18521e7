package bench

import (
	"os"
	"syscall"
)

// sysProcAttr has the kernel stop a child whose bench dies without stopping
// it (SIGKILL, a crash): no mock or service is left running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}

// selfCPUSeconds is the user and system CPU time of this process, to the
// microsecond (/proc's ticks are 10ms: too coarse for a short phase).
func selfCPUSeconds() (float64, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9, true
}

// childPeakRSSMB is the peak resident set of a child that has exited.
func childPeakRSSMB(ps *os.ProcessState) (float64, bool) {
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok || ru == nil {
		return 0, false
	}
	return float64(ru.Maxrss) / 1024, true // kB on Linux
}
