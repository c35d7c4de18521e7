package cbtest

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
)

// The management REST API (ns_server) on each node's mgmt port: what gocb
// and gocbcore use (facts §3.10, §8), plus /pools and /pools/default.

// httpHandler wraps a node's routes: tracked for Close, held while the
// node hangs, and behind HTTP Basic auth.
func (s *Server) httpHandler(n *node, mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.enter() {
			http.Error(w, "server closing", http.StatusServiceUnavailable)
			return
		}
		defer s.wg.Done()
		if !n.waitRunning(s.done, r.Context().Done()) {
			return
		}
		if !(r.Method == http.MethodGet && r.URL.Path == "/pools") && !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="Couchbase Server Admin / REST"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func (s *Server) authorized(r *http.Request) bool {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		// The handshake verified it: its subject names the user.
		return r.TLS.VerifiedChains[0][0].Subject.CommonName == s.opts.Username
	}
	u, p, ok := r.BasicAuth()
	return ok && subtle.ConstantTimeCompare([]byte(u), []byte(s.opts.Username)) == 1 &&
		subtle.ConstantTimeCompare([]byte(p), []byte(s.secret.Load().password)) == 1
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func notFound(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusNotFound)
	_, _ = w.Write([]byte("Requested resource not found.\r\n"))
}

// fieldErrors is ns_server's validation error body.
func fieldErrors(w http.ResponseWriter, status int, field, msg string) {
	writeJSON(w, status, map[string]any{"errors": map[string]string{field: msg}})
}

func (s *Server) mgmtRoutes(n *node) *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("GET /whoami", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"id": s.opts.Username, "domain": "admin", "roles": []map[string]string{{"role": "admin"}}})
	})
	m.HandleFunc("GET /pools", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{
			"isAdminCreds": s.authorized(r), "isEnterprise": true, "uuid": clusterUUID,
			"implementationVersion": "7.6.2-0000-enterprise",
			"pools":                 []map[string]string{{"name": "default", "uri": "/pools/default?uuid=" + clusterUUID}},
		})
	})
	m.HandleFunc("GET /pools/default", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		var nodes []map[string]any
		for _, x := range s.nodes {
			nodes = append(nodes, map[string]any{
				"hostname": "127.0.0.1:" + strconv.Itoa(x.mgmtPort), "thisNode": x == n,
				"ports": map[string]int{"direct": x.kvPort}, "services": []string{"kv", "n1ql", "index"},
				"clusterMembership": "active", "status": "healthy", "version": "7.6.2-0000-enterprise",
				"nodeUUID": fmt.Sprintf("%032x", x.idx+1),
			})
		}
		writeJSON(w, 200, map[string]any{"name": "default", "clusterName": "cbtest", "rev": s.rev, "nodes": nodes,
			"buckets": map[string]string{"uri": "/pools/default/buckets?v=" + strconv.FormatInt(s.rev, 10)}, "rebalanceStatus": "none"})
	})
	m.HandleFunc("GET /pools/default/buckets", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		out := []map[string]any{}
		for _, name := range s.order {
			out = append(out, s.bucketInfoLocked(s.buckets[name], n.idx))
		}
		writeJSON(w, 200, out)
	})
	m.HandleFunc("POST /pools/default/buckets", s.handleCreateBucket)
	m.HandleFunc("GET /pools/default/buckets/{b}", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		b := s.buckets[r.PathValue("b")]
		if b == nil {
			notFound(w)
			return
		}
		writeJSON(w, 200, s.bucketInfoLocked(b, n.idx))
	})
	m.HandleFunc("POST /pools/default/buckets/{b}", s.handleUpdateBucket)
	m.HandleFunc("DELETE /pools/default/buckets/{b}", s.handleDropBucket)
	m.HandleFunc("POST /pools/default/buckets/{b}/controller/doFlush", s.handleFlush)
	scopes := func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		b := s.buckets[r.PathValue("b")]
		if b == nil {
			notFound(w)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b.man.manifestJSON())
	}
	m.HandleFunc("GET /pools/default/buckets/{b}/scopes", scopes)
	m.HandleFunc("GET /pools/default/buckets/{b}/scopes/", scopes)
	m.HandleFunc("POST /pools/default/buckets/{b}/scopes", func(w http.ResponseWriter, r *http.Request) {
		s.manifestOp(w, r, func(b *bucket) error {
			_, err := s.createScopeLocked(b, r.PostFormValue("name"))
			return err
		})
	})
	m.HandleFunc("DELETE /pools/default/buckets/{b}/scopes/{s}", func(w http.ResponseWriter, r *http.Request) {
		s.manifestOp(w, r, func(b *bucket) error {
			return s.dropScopeLocked(b, r.PathValue("s"))
		})
	})
	m.HandleFunc("POST /pools/default/buckets/{b}/scopes/{s}/collections", func(w http.ResponseWriter, r *http.Request) {
		s.manifestOp(w, r, func(b *bucket) error {
			ttl, never, err := formTTL(r)
			if err != nil {
				return err
			}
			c, err := s.createCollectionLocked(b, r.PathValue("s"), r.PostFormValue("name"), ttl, r.PostFormValue("history") == "true")
			if c != nil {
				c.never = never
			}
			return err
		})
	})
	m.HandleFunc("DELETE /pools/default/buckets/{b}/scopes/{s}/collections/{c}", func(w http.ResponseWriter, r *http.Request) {
		s.manifestOp(w, r, func(b *bucket) error {
			return s.dropCollectionLocked(b, r.PathValue("s"), r.PathValue("c"))
		})
	})
	m.HandleFunc("PATCH /pools/default/buckets/{b}/scopes/{s}/collections/{c}", func(w http.ResponseWriter, r *http.Request) {
		s.manifestOp(w, r, func(b *bucket) error {
			c := b.man.collection(r.PathValue("s"), r.PathValue("c"))
			if c == nil {
				if b.man.scope(r.PathValue("s")) == nil {
					return &mgmtError{404, fmt.Sprintf("Scope with name %q is not found", r.PathValue("s"))}
				}
				return &mgmtError{404, fmt.Sprintf("Collection with name %q in scope %q is not found", r.PathValue("c"), r.PathValue("s"))}
			}
			ttl, never, err := formTTL(r)
			if err != nil {
				return err
			}
			if r.PostFormValue("maxTTL") != "" {
				c.maxTTL, c.never = ttl, never
			}
			if h := r.PostFormValue("history"); h != "" {
				c.history = h == "true"
			}
			b.man.uid++
			s.manifestChangedLocked(b)
			return nil
		})
	})
	stream := func(w http.ResponseWriter, r *http.Request) { s.streamConfig(w, r, n) }
	m.HandleFunc("GET /pools/default/bs/{b}", stream)
	m.HandleFunc("GET /pools/default/bucketsStreaming/{b}", stream)
	m.HandleFunc("GET /pools/default/b/{b}", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		b := s.buckets[r.PathValue("b")]
		if b == nil {
			notFound(w)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(s.bucketConfigLocked(b, n.idx))
	})
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { notFound(w) })
	return m
}

// formTTL reads a collection's maxTTL: seconds, 0 (the bucket's) or -1
// (never: Couchbase 7.6 and later).
func formTTL(r *http.Request) (ttl uint32, never bool, err error) {
	v := r.PostFormValue("maxTTL")
	if v == "-1" {
		return 0, true, nil
	}
	n, err := formUint(r, "maxTTL")
	if err != nil || n > math.MaxInt32 {
		return 0, false, &mgmtError{400, "maxTTL: " + v + " is not -1 or seconds up to 2147483647"}
	}
	return uint32(n), false, nil
}

func formUint(r *http.Request, key string) (uint64, error) {
	v := r.PostFormValue(key)
	if v == "" {
		return 0, nil
	}
	return strconv.ParseUint(v, 10, 32)
}

// manifestOp runs a scope or collection change and answers ns_server's
// way: 200 {"uid":"<hex>"} or an error body gocb classifies.
// RefuseManagement answers, while on, a request to create or drop a
// bucket, scope or collection 403, as the cluster answers a user with
// data and query roles alone, before it looks whether what is asked for
// exists. For tests.
func (s *Server) RefuseManagement(on bool) { s.refuseManagement.Store(on) }

// forbidden answers 403 while RefuseManagement is on.
func (s *Server) forbidden(w http.ResponseWriter, permission string) bool {
	if !s.refuseManagement.Load() {
		return false
	}
	writeJSON(w, 403, map[string]any{"message": "Forbidden. User needs the following permissions",
		"permissions": []string{permission}})
	return true
}

func (s *Server) manifestOp(w http.ResponseWriter, r *http.Request, f func(b *bucket) error) {
	if s.forbidden(w, "cluster.bucket["+r.PathValue("b")+"].collections!write") {
		return
	}
	_ = r.ParseForm()
	s.mu.Lock()
	b := s.buckets[r.PathValue("b")]
	if b == nil {
		s.mu.Unlock()
		notFound(w)
		return
	}
	err := f(b)
	uid := b.man.uid
	s.mu.Unlock()
	var me *mgmtError
	switch {
	case err == nil:
		writeJSON(w, 200, map[string]string{"uid": hexUID(uid)})
	case errors.As(err, &me):
		fieldErrors(w, me.status, "_", me.msg)
	default:
		fieldErrors(w, 500, "_", err.Error())
	}
}

func (s *Server) bucketInfoLocked(b *bucket, thisNode int) map[string]any {
	info := s.bucketConfigMapLocked(b, thisNode)
	controllers := map[string]string{"compactAll": "/pools/default/buckets/" + b.name + "/controller/compactBucket"}
	if b.flushEnabled {
		controllers["flush"] = "/pools/default/buckets/" + b.name + "/controller/doFlush"
	}
	eviction := "valueOnly"
	if b.bucketType == "ephemeral" {
		eviction = "noEviction"
	}
	raw := b.ramQuotaMB << 20
	for k, v := range map[string]any{
		"bucketType": b.bucketType, "replicaNumber": b.replicas, "replicaIndex": false,
		"quota":       map[string]uint64{"ram": raw * uint64(len(s.nodes)), "rawRAM": raw},
		"controllers": controllers, "evictionPolicy": eviction, "conflictResolutionType": "seqno",
		"maxTTL": b.maxTTL, "compressionMode": "passive", "durabilityMinLevel": "none", "storageBackend": "couchstore",
		"numVBuckets": len(b.vbs), "authType": "sasl",
	} {
		info[k] = v
	}
	return info
}

func (s *Server) handleCreateBucket(w http.ResponseWriter, r *http.Request) {
	if s.forbidden(w, "cluster.buckets!create") {
		return
	}
	if err := r.ParseForm(); err != nil {
		fieldErrors(w, 400, "_", err.Error())
		return
	}
	p := bucketParams{name: r.PostFormValue("name"), bucketType: r.PostFormValue("bucketType"), flush: r.PostFormValue("flushEnabled") == "1"}
	switch p.bucketType {
	case "", "membase", "couchbase":
		p.bucketType = "membase"
	case "ephemeral":
	case "memcached":
		fieldErrors(w, 400, "bucketType", "memcached buckets are not supported by cbtest")
		return
	default:
		fieldErrors(w, 400, "bucketType", "invalid bucket type")
		return
	}
	if p.name == "" {
		fieldErrors(w, 400, "name", "Bucket name cannot be empty")
		return
	}
	for _, c := range p.name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._%-", c)) {
			fieldErrors(w, 400, "name", "Bucket name can only contain characters in range A-Z, a-z, 0-9 as well as underscore, period, dash & percent.")
			return
		}
	}
	ram, err := strconv.ParseUint(r.PostFormValue("ramQuotaMB"), 10, 64)
	if err != nil || ram < 100 {
		fieldErrors(w, 400, "ramQuota", "RAM quota cannot be less than 100 MiB")
		return
	}
	p.ramQuotaMB = ram
	if v := r.PostFormValue("replicaNumber"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 3 {
			fieldErrors(w, 400, "replicaNumber", "Replica number must be between 0 and 3")
			return
		}
		p.replicas = n
	}
	if v := r.PostFormValue("maxTTL"); v != "" {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			fieldErrors(w, 400, "maxTTL", "Max TTL must be an integer between 0 and 2147483647")
			return
		}
		p.maxTTL = uint32(n)
	}
	// Every field is checked, and every error answered (ns_server's
	// parse_bucket_params): a client that keeps one of them sees either.
	errs := map[string]string{}
	s.mu.Lock()
	_, exists := s.buckets[p.name]
	var used uint64
	for _, b := range s.buckets {
		used += b.ramQuotaMB
	}
	s.mu.Unlock()
	if exists {
		errs["name"] = errBucketExists.Error()
	}
	if s.opts.ClusterRAMMB > 0 && used+ram > s.opts.ClusterRAMMB {
		errs["ramQuota"] = "RAM quota specified is too large to be provisioned into this cluster."
	}
	if len(errs) > 0 {
		writeJSON(w, 400, map[string]any{"errors": errs})
		return
	}
	if _, err := s.createBucket(p); err != nil {
		fieldErrors(w, 400, "name", err.Error())
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

func (s *Server) handleUpdateBucket(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buckets[r.PathValue("b")]
	if b == nil {
		notFound(w)
		return
	}
	if v := r.PostFormValue("ramQuotaMB"); v != "" {
		ram, err := strconv.ParseUint(v, 10, 64)
		if err != nil || ram < 100 {
			fieldErrors(w, 400, "ramQuota", "RAM quota cannot be less than 100 MiB")
			return
		}
		b.ramQuotaMB = ram
	}
	if v := r.PostFormValue("flushEnabled"); v != "" {
		b.flushEnabled = v == "1"
	}
	if v := r.PostFormValue("replicaNumber"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 && n <= 3 {
			b.replicas = n
		}
	}
	if v := r.PostFormValue("maxTTL"); v != "" {
		if n, err := strconv.ParseUint(v, 10, 32); err == nil {
			b.maxTTL = uint32(n)
		}
	}
	s.bumpRevLocked()
	w.WriteHeader(200)
}

func (s *Server) handleDropBucket(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	b := s.buckets[r.PathValue("b")]
	if b == nil {
		s.mu.Unlock()
		notFound(w)
		return
	}
	delete(s.buckets, b.name)
	for i, name := range s.order {
		if name == b.name {
			s.order = append(s.order[:i:i], s.order[i+1:]...)
			break
		}
	}
	s.query.dropBucketLocked(b.name)
	b.notify()
	s.bumpRevLocked()
	s.mu.Unlock()
	for _, n := range s.nodes {
		n.closeConns(b)
	}
	w.WriteHeader(200)
}

func (s *Server) handleFlush(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buckets[r.PathValue("b")]
	if b == nil {
		notFound(w)
		return
	}
	if !b.flushEnabled {
		writeJSON(w, 400, map[string]string{"_": "Flush is disabled for the bucket"})
		return
	}
	for _, vb := range b.vbs {
		vb.reset()
	}
	b.notify()
	w.WriteHeader(200)
}

// streamConfig is the HTTP config stream: the bucket config now and after
// every change, until the client goes away.
func (s *Server) streamConfig(w http.ResponseWriter, r *http.Request, n *node) {
	name := r.PathValue("b")
	fl, _ := w.(http.Flusher)
	started := false
	for {
		s.mu.Lock()
		b := s.buckets[name]
		var cfg []byte
		if b != nil {
			cfg = s.bucketConfigLocked(b, n.idx)
		}
		changed, drop := s.cfgChanged, s.httpDrop
		s.mu.Unlock()
		if b == nil {
			if !started {
				notFound(w)
			}
			return
		}
		if !started {
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.WriteHeader(200)
			started = true
		}
		if _, err := w.Write(append(cfg, "\n\n\n\n"...)); err != nil {
			return
		}
		if fl != nil {
			fl.Flush()
		}
		select {
		case <-changed:
		case <-drop:
			return
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		}
	}
}
