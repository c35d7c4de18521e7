package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is ordermail running as a process of its own: the mock or the
// service.
type child struct {
	name    string
	cmd     *exec.Cmd
	exited  chan struct{} // closed once the process has exited and its output is read
	err     error         // its exit error, once exited is closed
	stopped bool

	mu     sync.Mutex
	tail   []string // its last lines of standard error
	hidden bool     // some line of it was not shown
}

const tailLines = 30

// startChild starts exe with args; every line it writes to standard error
// goes to onLine, from one goroutine, which says whether it showed it, and
// into the tail kept for errors.
// Its environment has no ORDERMAIL_ variables but env: the bench's
// settings, not a deployment's, decide what it measures.
func startChild(name, exe string, args, env []string, onLine func(string) bool) (*child, error) {
	c := &child{name: name, cmd: exec.Command(exe, args...), exited: make(chan struct{})}
	c.cmd.Env = append(cleanEnv(os.Environ()), env...)
	c.cmd.SysProcAttr = sysProcAttr()
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		defer close(c.exited)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			c.tail = append(c.tail, line)
			if len(c.tail) > tailLines {
				c.tail = c.tail[len(c.tail)-tailLines:]
			}
			c.mu.Unlock()
			if !onLine(line) {
				c.mu.Lock()
				c.hidden = true
				c.mu.Unlock()
			}
		}
		io.Copy(io.Discard, stderr) // a line too long for the scanner: keep the pipe flowing
		c.err = c.cmd.Wait()
	}()
	return c, nil
}

func cleanEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "ORDERMAIL_") {
			out = append(out, kv)
		}
	}
	return out
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// done says whether the process has exited.
func (c *child) done() bool {
	select {
	case <-c.exited:
		return true
	default:
		return false
	}
}

// failure describes a process that exited when it should not have.
func (c *child) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.hidden {
		return fmt.Errorf("%s exited (%v); its output is above", c.name, c.err)
	}
	return logTail{fmt.Errorf("%s exited (%v); its last output:\n%s", c.name, c.err, strings.Join(c.tail, "\n"))}
}

// logTail is an error that ends with a process's last lines of output:
// lines of its own, which the command line keeps as lines (MultiLine).
type logTail struct{ error }

func (e logTail) Unwrap() error   { return e.error }
func (e logTail) MultiLine() bool { return true }

// stop sends SIGTERM and waits for the exit, killing the process when it
// has not exited after grace. It returns the exit error, nil for a clean
// exit, once: stopping it again returns nil.
func (c *child) stop(grace time.Duration) error {
	if c.stopped {
		return nil
	}
	c.stopped = true
	if c.done() {
		return c.err
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		c.cmd.Process.Kill()
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-c.exited:
		return c.err
	case <-t.C:
		c.cmd.Process.Kill()
		<-c.exited
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", c.name, grace)
	}
}

// peakRSSMB reads the peak resident set (VmHWM) of a process from /proc;
// false where there is no /proc.
func peakRSSMB(pid int) (float64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			if err != nil {
				return 0, false
			}
			return kb / 1024, true
		}
	}
	return 0, false
}

// cpuSeconds reads a process's user and system CPU time.
func cpuSeconds(pid int) (float64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// After the command name in parentheses: state is field 3, utime 14, stime 15.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	const ticks = 100 // USER_HZ on Linux
	return (ut + st) / ticks, true
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// listeningAddr reads the address from the line `ordermail mockmail
// --log-format json` logs once it listens.
func listeningAddr(line string) (string, bool) {
	var l struct{ Msg, Addr string }
	if json.Unmarshal([]byte(line), &l) != nil || l.Msg != "mock email service listening" || l.Addr == "" {
		return "", false
	}
	return l.Addr, true
}
