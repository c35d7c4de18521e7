//go:build !linux

package bench

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return nil }

func selfCPUSeconds() (float64, bool) { return 0, false }
