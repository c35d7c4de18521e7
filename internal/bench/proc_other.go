//go:build !linux

package bench

import (
	"os"
	"syscall"
)

func sysProcAttr() *syscall.SysProcAttr { return nil }

func selfCPUSeconds() (float64, bool) { return 0, false }

func childPeakRSSMB(*os.ProcessState) (float64, bool) { return 0, false }
