package cbtest

import (
	"maps"
	"strings"
	"sync"
)

// Work is what the server was asked to do since it started or since the
// last ResetWork: KV operations by name ("get", "set", "add", "replace",
// "delete", "touch", "gat", "lookup_in", "mutate_in") and N1QL statements run, by their text
// (prepared ones under the text they were prepared from). Tests count with
// it the work a store does, as a scale test counts rows touched.
type Work struct {
	KV         map[string]int
	Statements map[string]int
	// Consistency is the scan_consistency each statement's last run asked
	// for ("" when it sent none: not_bounded), by its text.
	Consistency map[string]string
}

// workCounts are the counters behind Work.
type workCounts struct {
	mu          sync.Mutex
	kv          map[string]int
	statements  map[string]int
	consistency map[string]string
}

var kvOpNames = map[byte]string{opGet: "get", opSet: "set", opAdd: "add", opReplace: "replace",
	opDelete: "delete", opTouch: "touch", opGAT: "gat", opSubdocMultiLookup: "lookup_in", opSubdocMultiMutation: "mutate_in"}

func (w *workCounts) kvOp(opcode byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.kv == nil {
		w.kv = map[string]int{}
	}
	w.kv[kvOpNames[opcode]]++
}

func (w *workCounts) statement(text, consistency string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.statements == nil {
		w.statements, w.consistency = map[string]int{}, map[string]string{}
	}
	w.statements[text]++
	w.consistency[text] = consistency
}

// Work is a copy of the counts since the start or the last ResetWork.
func (s *Server) Work() Work {
	s.work.mu.Lock()
	defer s.work.mu.Unlock()
	return Work{KV: maps.Clone(s.work.kv), Statements: maps.Clone(s.work.statements), Consistency: maps.Clone(s.work.consistency)}
}

// ResetWork starts the counts afresh.
func (s *Server) ResetWork() {
	s.work.mu.Lock()
	defer s.work.mu.Unlock()
	s.work.kv, s.work.statements, s.work.consistency = nil, nil, nil
}

// StatementsWith counts the statements run whose text contains part.
func (w Work) StatementsWith(part string) int {
	n := 0
	for text, c := range w.Statements {
		if strings.Contains(text, part) {
			n += c
		}
	}
	return n
}
