package cbtest

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/couchbase/gocbcore/v10"
	"github.com/couchbase/gocbcore/v10/memd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The sub-document calls exactly as the store makes them.

const sentValue = "confirmation:k@123"

func writeSent(coll *gocb.Collection, key, body string, cas gocb.Cas, dur gocb.DurabilityLevel) (*gocb.MutateInResult, error) {
	return coll.MutateIn(key, []gocb.MutateInSpec{
		gocb.UpsertSpec("ordermail.sent", sentValue, &gocb.UpsertSpecOptions{IsXattr: true, CreatePath: true}),
		gocb.ReplaceSpec("", json.RawMessage(body), nil),
	}, &gocb.MutateInOptions{Cas: cas, PreserveExpiry: true, DurabilityLevel: dur})
}

type sentDoc struct {
	sent    string
	sentErr error
	body    []byte
	cas     gocb.Cas
}

func readSent(t *testing.T, coll *gocb.Collection, key string, opts *gocb.LookupInOptions) (sentDoc, error) {
	t.Helper()
	res, err := coll.LookupIn(key, []gocb.LookupInSpec{
		gocb.GetSpec("ordermail.sent", &gocb.GetSpecOptions{IsXattr: true}),
		gocb.GetSpec("", nil),
	}, opts)
	if err != nil {
		return sentDoc{}, err
	}
	var d sentDoc
	d.sentErr = res.ContentAt(0, &d.sent)
	_ = res.ContentAt(1, &d.body)
	d.cas = res.Cas()
	return d, nil
}

func subdocServer(t *testing.T, opts Options) (*Server, *gocb.Cluster, *gocb.Collection) {
	t.Helper()
	if opts.VBuckets == 0 {
		opts.Nodes, opts.VBuckets = 2, 16
	}
	opts.Buckets = []BucketSpec{{Name: "orders", Collections: []string{"_default.inbound"}}}
	s := Start(t, opts)
	c := connect(t, s)
	return s, c, readyBucket(t, c, "orders").Collection("inbound")
}

func TestSubdocWritesAnXattrAndTheBodyAtomically(t *testing.T) {
	clock := newFakeClock()
	s, _, coll := subdocServer(t, Options{Clock: clock.Now, ExpiryPagerInterval: -1})
	ins, err := coll.Insert("k", map[string]int{"v": 1}, &gocb.InsertOptions{Expiry: 10 * time.Second})
	require.NoError(t, err)

	res, err := writeSent(coll, "k", `{"v":2,"note":"sent"}`, ins.Cas(), gocb.DurabilityLevelNone)
	require.NoError(t, err)
	assert.NotEqual(t, ins.Cas(), res.Cas(), "a new version")
	assert.NotZero(t, res.MutationToken().SequenceNumber(), "mutation extras")

	d, err := readSent(t, coll, "k", nil)
	require.NoError(t, err)
	require.NoError(t, d.sentErr)
	assert.Equal(t, sentValue, d.sent)
	assert.Equal(t, `{"v":2,"note":"sent"}`, string(d.body))
	assert.Equal(t, res.Cas(), d.cas)

	got, err := coll.Get("k", nil)
	require.NoError(t, err)
	var body json.RawMessage
	require.NoError(t, got.Content(&body))
	assert.Equal(t, `{"v":2,"note":"sent"}`, string(body), "GET returns the body only")
	raw, _, _, _ := s.Doc("orders", "_default", "inbound", "k")
	assert.Equal(t, `{"v":2,"note":"sent"}`, string(raw))
	assert.Equal(t, 1, s.Work().KV["mutate_in"])
	assert.Equal(t, 1, s.Work().KV["lookup_in"])

	// The whole xattr is {"sent":…}, as the path created it.
	whole, err := coll.LookupIn("k", []gocb.LookupInSpec{gocb.GetSpec("ordermail", &gocb.GetSpecOptions{IsXattr: true})}, nil)
	require.NoError(t, err)
	var x map[string]string
	require.NoError(t, whole.ContentAt(0, &x))
	assert.Equal(t, map[string]string{"sent": sentValue}, x)

	// PreserveExpiry kept the 10s expiry.
	clock.Advance(15 * time.Second)
	_, err = coll.Get("k", nil)
	assert.ErrorIs(t, err, gocb.ErrDocumentNotFound, "expired: the expiry was kept")
}

func TestSubdocMutateInWithoutPreserveExpiryClearsIt(t *testing.T) {
	clock := newFakeClock()
	_, _, coll := subdocServer(t, Options{Clock: clock.Now, ExpiryPagerInterval: -1})
	ins, err := coll.Insert("k", map[string]int{"v": 1}, &gocb.InsertOptions{Expiry: 10 * time.Second})
	require.NoError(t, err)
	_, err = coll.MutateIn("k", []gocb.MutateInSpec{gocb.UpsertSpec("ordermail.sent", sentValue,
		&gocb.UpsertSpecOptions{IsXattr: true, CreatePath: true})}, &gocb.MutateInOptions{Cas: ins.Cas()})
	require.NoError(t, err)
	clock.Advance(15 * time.Second)
	_, err = coll.Get("k", nil)
	assert.NoError(t, err, "a mutation without expiry or PreserveExpiry clears it (subdocument.cc allocate_document)")
}

func TestSubdocLookupOfAMissingXattrAndANonJSONBody(t *testing.T) {
	_, _, coll := subdocServer(t, Options{})
	_, err := coll.Upsert("json", map[string]int{"v": 1}, nil)
	require.NoError(t, err)
	bin := []byte{0xff, 'n', 0, 'j'}
	_, err = coll.Upsert("bin", bin, &gocb.UpsertOptions{Transcoder: gocb.NewRawBinaryTranscoder()})
	require.NoError(t, err)

	d, err := readSent(t, coll, "json", nil)
	require.NoError(t, err)
	assert.ErrorIs(t, d.sentErr, gocb.ErrPathNotFound)
	assert.JSONEq(t, `{"v":1}`, string(d.body))

	d, err = readSent(t, coll, "bin", nil)
	require.NoError(t, err)
	assert.ErrorIs(t, d.sentErr, gocb.ErrPathNotFound)
	assert.Equal(t, bin, d.body, "the whole-document get returns the raw body")

	// A body path on a body that is not JSON.
	res, err := coll.LookupIn("bin", []gocb.LookupInSpec{gocb.GetSpec("v", nil)}, nil)
	require.NoError(t, err)
	var v any
	assert.ErrorIs(t, res.ContentAt(0, &v), gocb.ErrValueNotJSON)
	res, err = coll.LookupIn("json", []gocb.LookupInSpec{gocb.GetSpec("v", nil), gocb.ExistsSpec("nope", nil)}, nil)
	require.NoError(t, err)
	require.NoError(t, res.ContentAt(0, &v))
	assert.EqualValues(t, 1, v)
	assert.False(t, res.Exists(1))

	_, err = readSent(t, coll, "missing", nil)
	assert.ErrorIs(t, err, gocb.ErrDocumentNotFound)
}

func TestSubdocStaleCASChangesNothing(t *testing.T) {
	_, _, coll := subdocServer(t, Options{})
	ins, err := coll.Insert("k", map[string]int{"v": 1}, nil)
	require.NoError(t, err)
	_, err = writeSent(coll, "k", `{"v":2}`, ins.Cas()+1, gocb.DurabilityLevelNone)
	// The server answers KEY_EEXISTS; gocbcore makes it ErrCasMismatch and
	// gocb v2.11.1 turns that back into ErrDocumentExists for MutateIn
	// (kvprovider_coresubdoc.go, GOCBC-1019), as against a real server.
	assert.ErrorIs(t, err, gocb.ErrDocumentExists)
	d, err := readSent(t, coll, "k", nil)
	require.NoError(t, err)
	assert.ErrorIs(t, d.sentErr, gocb.ErrPathNotFound, "no xattr written")
	assert.JSONEq(t, `{"v":1}`, string(d.body), "body unchanged")
	assert.Equal(t, ins.Cas(), d.cas, "no new version")

	_, err = writeSent(coll, "absent", `{"v":2}`, 0, gocb.DurabilityLevelNone)
	assert.ErrorIs(t, err, gocb.ErrDocumentNotFound, "no MkDoc: replace semantics")
}

func TestSubdocPlainWritesKeepXattrs(t *testing.T) {
	_, _, coll := subdocServer(t, Options{})
	ins, err := coll.Insert("k", map[string]int{"v": 1}, nil)
	require.NoError(t, err)
	_, err = writeSent(coll, "k", `{"v":2}`, ins.Cas(), gocb.DurabilityLevelNone)
	require.NoError(t, err)

	_, err = coll.Replace("k", map[string]int{"v": 3}, nil)
	require.NoError(t, err)
	d, err := readSent(t, coll, "k", nil)
	require.NoError(t, err)
	assert.Equal(t, sentValue, d.sent, "REPLACE keeps the xattrs")
	assert.JSONEq(t, `{"v":3}`, string(d.body))

	_, err = coll.Upsert("k", "not an object", nil)
	require.NoError(t, err)
	d, err = readSent(t, coll, "k", nil)
	require.NoError(t, err)
	assert.Equal(t, sentValue, d.sent, "SET keeps the xattrs")
	got, err := coll.Get("k", nil)
	require.NoError(t, err)
	var s string
	require.NoError(t, got.Content(&s))
	assert.Equal(t, "not an object", s, "GET shows the body only")
}

func TestSubdocRemoveThenInsertDropsXattrs(t *testing.T) {
	_, _, coll := subdocServer(t, Options{})
	_, err := coll.Insert("k", map[string]int{"v": 1}, nil)
	require.NoError(t, err)
	_, err = coll.MutateIn("k", []gocb.MutateInSpec{
		gocb.UpsertSpec("_sys", "kept", &gocb.UpsertSpecOptions{IsXattr: true}),
		gocb.UpsertSpec("ordermail.sent", sentValue, &gocb.UpsertSpecOptions{IsXattr: true, CreatePath: true}),
	}, nil)
	require.NoError(t, err)
	_, err = coll.Remove("k", nil)
	require.NoError(t, err)
	_, err = readSent(t, coll, "k", nil)
	assert.ErrorIs(t, err, gocb.ErrDocumentNotFound)

	// The tombstone keeps the system xattr only (ExtendedAttributes.md,
	// "XATTR lifetime").
	deleted := &gocb.LookupInOptions{}
	deleted.Internal.DocFlags = gocb.SubdocDocFlagAccessDeleted
	res, err := coll.LookupIn("k", []gocb.LookupInSpec{
		gocb.GetSpec("_sys", &gocb.GetSpecOptions{IsXattr: true}),
		gocb.GetSpec("ordermail", &gocb.GetSpecOptions{IsXattr: true}),
		gocb.GetSpec("", nil),
	}, deleted)
	require.NoError(t, err)
	var sys string
	require.NoError(t, res.ContentAt(0, &sys))
	assert.Equal(t, "kept", sys)
	var none any
	assert.ErrorIs(t, res.ContentAt(1, &none), gocb.ErrPathNotFound, "user xattrs go with the body")
	assert.ErrorIs(t, res.ContentAt(2, &none), gocb.ErrPathNotFound, "no body")

	_, err = coll.Insert("k", map[string]int{"v": 2}, nil)
	require.NoError(t, err)
	d, err := readSent(t, coll, "k", nil)
	require.NoError(t, err)
	assert.ErrorIs(t, d.sentErr, gocb.ErrPathNotFound, "a new document has no xattrs")
	res, err = coll.LookupIn("k", []gocb.LookupInSpec{gocb.ExistsSpec("_sys", &gocb.ExistsSpecOptions{IsXattr: true})}, nil)
	require.NoError(t, err)
	assert.False(t, res.Exists(0), "nor the tombstone's system xattrs")

	// MkDoc creates, Add refuses an existing document.
	_, err = coll.MutateIn("fresh", []gocb.MutateInSpec{gocb.UpsertSpec("ordermail.sent", sentValue,
		&gocb.UpsertSpecOptions{IsXattr: true})}, &gocb.MutateInOptions{StoreSemantic: gocb.StoreSemanticsUpsert})
	require.NoError(t, err)
	d, err = readSent(t, coll, "fresh", nil)
	require.NoError(t, err)
	assert.Equal(t, sentValue, d.sent)
	assert.Equal(t, "{}", string(d.body), "a created document's body is the root the specs need")
	_, err = coll.MutateIn("fresh", []gocb.MutateInSpec{gocb.ReplaceSpec("", json.RawMessage(`{}`), nil)},
		&gocb.MutateInOptions{StoreSemantic: gocb.StoreSemanticsInsert})
	assert.ErrorIs(t, err, gocb.ErrDocumentExists)
	_, err = coll.MutateIn("k", []gocb.MutateInSpec{gocb.RemoveSpec("ordermail", &gocb.RemoveSpecOptions{IsXattr: true})}, nil)
	assert.ErrorIs(t, err, gocb.ErrPathNotFound, "the failing spec's status")
}

func TestSubdocDurableMutateIn(t *testing.T) {
	s, _, coll := subdocServer(t, Options{MajorityOnly: true})
	ins, err := coll.Insert("k", map[string]int{"v": 1}, nil)
	require.NoError(t, err)
	vb := s.VBucketOf("k")
	before := s.HighSeqno("orders", vb)

	res, err := writeSent(coll, "k", `{"v":2}`, ins.Cas(), gocb.DurabilityLevelMajority)
	require.NoError(t, err)
	assert.Error(t, s.Rollback("orders", vb, before), "no failover loses a durable write")

	_, err = writeSent(coll, "k", `{"v":3}`, res.Cas(), gocb.DurabilityLevelPersistToMajority)
	assert.ErrorIs(t, err, gocb.ErrDurabilityLevelNotAvailable)

	s.AnswerDurableWritesAmbiguousNotMade("orders", vb, 1)
	_, err = writeSent(coll, "k", `{"v":4}`, res.Cas(), gocb.DurabilityLevelMajority)
	assert.ErrorIs(t, err, gocb.ErrDurabilityAmbiguous)
	d, err := readSent(t, coll, "k", nil)
	require.NoError(t, err)
	assert.Equal(t, `{"v":2}`, string(d.body), "aborted: not made")

	s.SetDurabilityImpossible(true)
	_, err = writeSent(coll, "k", `{"v":5}`, res.Cas(), gocb.DurabilityLevelMajority)
	assert.ErrorIs(t, err, gocb.ErrDurabilityImpossible)
}

// mutationLog is a StreamObserver that also keeps every mutation whole.
type mutationLog struct {
	*recorder
	muts chan gocbcore.DcpMutation
}

func (m *mutationLog) Mutation(mu gocbcore.DcpMutation) {
	m.muts <- mu
	m.recorder.Mutation(mu)
}

// dcpMutationOf streams every vBucket of orders on a DCP connection
// opened with flags and returns the first mutation of key.
func dcpMutationOf(t *testing.T, s *Server, flags memd.DcpOpenFlag, key string) gocbcore.DcpMutation {
	t.Helper()
	ac := &gocbcore.DCPAgentConfig{}
	require.NoError(t, ac.FromConnStr(s.ConnStr()))
	ac.SecurityConfig.Auth = gocbcore.PasswordAuthProvider{Username: s.Username(), Password: s.Password()}
	ac.BucketName, ac.UserAgent = "orders", "cbtest"
	ac.IoConfig.UseCollections = true
	ac.CompressionConfig.Enabled = false
	agent, err := gocbcore.CreateDcpAgent(ac, fmt.Sprintf("cbtest-%s-%d", t.Name(), agentSeq.Add(1)), flags)
	require.NoError(t, err)
	defer agent.Close()
	ready := make(chan error, 1)
	_, err = agent.WaitUntilReady(time.Now().Add(10*time.Second), gocbcore.WaitUntilReadyOptions{},
		func(_ *gocbcore.WaitUntilReadyResult, err error) { ready <- err })
	require.NoError(t, err)
	require.NoError(t, <-ready)
	obs := &mutationLog{recorder: newRecorder(), muts: make(chan gocbcore.DcpMutation, 1024)}
	for vb := 0; vb < s.NumVBuckets(); vb++ {
		_, err := open(t, agent, uint16(vb), position{}, nil, obs)
		require.NoError(t, err)
	}
	for {
		select {
		case mu := <-obs.muts:
			if string(mu.Key) == key {
				return mu
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no DCP mutation of %s", key)
		}
	}
}

func TestSubdocDCPCarriesTheBodyWithoutXattrs(t *testing.T) {
	s, _, coll := subdocServer(t, Options{})
	ins, err := coll.Insert("k", map[string]int{"v": 1}, nil)
	require.NoError(t, err)
	res, err := writeSent(coll, "k", `{"v":2}`, ins.Cas(), gocb.DurabilityLevelNone)
	require.NoError(t, err)

	mu := dcpMutationOf(t, s, memd.DcpOpenFlagProducer, "k")
	assert.Equal(t, uint64(res.Cas()), mu.Cas)
	assert.Equal(t, `{"v":2}`, string(mu.Value), "the body only")
	assert.Equal(t, uint8(datatypeJSON), mu.Datatype)

	// Asked for, the xattrs come first (docs/Document.md encoding).
	mu = dcpMutationOf(t, s, memd.DcpOpenFlagProducer|memd.DcpOpenFlagIncludeXattrs, "k")
	assert.Equal(t, uint8(datatypeJSON|datatypeXattr), mu.Datatype)
	pair := "ordermail\x00" + `{"sent":"` + sentValue + `"}` + "\x00"
	want := binary.BigEndian.AppendUint32(nil, uint32(4+len(pair)))
	want = binary.BigEndian.AppendUint32(want, uint32(len(pair)))
	assert.Equal(t, string(want)+pair+`{"v":2}`, string(mu.Value))
}

func TestSubdocQuerySeesTheBodyOnly(t *testing.T) {
	s, c, b := queryServer(t)
	coll := b.Collection("inbound")
	ins, err := coll.Insert("k", map[string]int{"v": 1}, nil)
	require.NoError(t, err)
	_, err = writeSent(coll, "k", `{"v":2}`, ins.Cas(), gocb.DurabilityLevelNone)
	require.NoError(t, err)

	rows, err := queryRows[json.RawMessage](t, c, "SELECT RAW d FROM `orders`.`_default`.`inbound` d", nil)
	require.NoError(t, err)
	require.Len(t, rows, 1)
	assert.JSONEq(t, `{"v":2}`, string(rows[0]))

	// A query UPDATE is a SET: the xattrs stay.
	_, err = queryRows[string](t, c, "UPDATE `orders`.`_default`.`inbound` d SET d.v = 3 RETURNING RAW META(d).id", nil)
	require.NoError(t, err)
	d, err := readSent(t, coll, "k", nil)
	require.NoError(t, err)
	assert.Equal(t, sentValue, d.sent)
	raw, _, _, _ := s.Doc("orders", "_default", "inbound", "k")
	assert.JSONEq(t, `{"v":3}`, string(raw))
}

// The request checks gocb cannot reach (it orders xattr specs first and
// always negotiates XATTR).
func TestSubdocRequestChecks(t *testing.T) {
	spec := func(op, flags byte, path, value string) []byte {
		b := []byte{op, flags}
		b = binary.BigEndian.AppendUint16(b, uint16(len(path)))
		b = binary.BigEndian.AppendUint32(b, uint32(len(value)))
		return append(append(b, path...), value...)
	}
	cat := func(specs ...[]byte) []byte {
		var out []byte
		for _, s := range specs {
			out = append(out, s...)
		}
		return out
	}
	x := spec(sdDictUpsert, pathFlagXattr, "a.b", `1`)
	body := spec(sdSetDoc, 0, "", `{}`)
	for name, tc := range map[string]struct {
		extras []byte
		cas    uint64
		value  []byte
		noX    bool
		want   uint16
	}{
		"ok":                   {value: cat(x, body), want: 0},
		"xattr after body":     {value: cat(body, x), want: statusSubdocInvalidXattrOrder},
		"xattr not negotiated": {value: cat(x, body), noX: true, want: statusNotSupported},
		"bad X-Key":            {value: spec(sdDictUpsert, pathFlagXattr, "-a", `1`), want: statusXattrEINVAL},
		"X-Key too long":       {value: spec(sdDictUpsert, pathFlagXattr, "sixteen_bytes_xx", `1`), want: statusXattrEINVAL},
		"virtual xattr":        {value: spec(sdDictUpsert, pathFlagXattr, "$document.x", `1`), want: statusSubdocXattrCantModifyVattr},
		"add with CAS":         {extras: []byte{docFlagAdd}, cas: 1, value: x, want: statusEINVAL},
		"add and mkdoc":        {extras: []byte{docFlagAdd | docFlagMkDoc}, value: x, want: statusEINVAL},
		"access deleted":       {extras: []byte{docFlagAccessDeleted}, value: x, want: statusEINVAL},
		"bad extras":           {extras: []byte{0, 0}, value: x, want: statusEINVAL},
		"lookup op":            {value: spec(sdGet, 0, "a", ""), want: statusSubdocInvalidCombo},
		"array op":             {value: spec(0xcb, 0, "a", "1"), want: statusEINVAL},
		"no specs":             {want: statusSubdocInvalidCombo},
		"too many":             {value: cat(x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x), want: statusSubdocInvalidCombo},
		"truncated":            {value: x[:len(x)-1], want: statusEINVAL},
	} {
		c := &kvConn{features: map[uint16]bool{featXattr: !tc.noX}}
		_, err := c.parseSubdoc(&packet{opcode: opSubdocMultiMutation, extras: tc.extras, cas: tc.cas, value: tc.value}, true)
		got := uint16(0)
		if err != nil {
			got = err.status
		}
		assert.Equal(t, tc.want, got, name)
	}
}

func TestSubdocPaths(t *testing.T) {
	doc := []byte(`{"a":{"b":[1,{"c":true}]},"x.y":2, "q":"s"}`)
	for path, want := range map[string]string{
		"a.b[1].c": "true", "a.b[-1]": `{"c":true}`, "`x.y`": "2", "q": `"s"`, "a.b": `[1,{"c":true}]`,
	} {
		comps, st := parsePath(path)
		require.Zero(t, st, path)
		v, st := jsonGet(doc, comps)
		assert.Zero(t, st, path)
		assert.Equal(t, want, string(v), path)
	}
	for path, want := range map[string]uint16{"a.b[2]": statusSubdocPathENOENT, "q.r": statusSubdocPathMismatch, "a[0]": statusSubdocPathMismatch} {
		comps, _ := parsePath(path)
		_, st := jsonGet(doc, comps)
		assert.Equal(t, want, st, path)
	}
	for _, bad := range []string{"a.", "a..b", "a[x]", "a]", "`a", "a[-2]"} {
		_, st := parsePath(bad)
		assert.Equal(t, uint16(statusSubdocPathEINVAL), st, bad)
	}
	mut := func(path string, m pathMutation) (string, uint16) {
		comps, _ := parsePath(path)
		out, st := jsonMutate(doc, comps, m)
		return string(out), st
	}
	out, st := mut("n.m", pathMutation{op: sdDictUpsert, value: []byte(`1`), mkdir: true})
	assert.Zero(t, st)
	assert.Equal(t, `{"a":{"b":[1,{"c":true}]},"x.y":2,"q":"s","n":{"m":1}}`, out)
	_, st = mut("n.m", pathMutation{op: sdDictUpsert, value: []byte(`1`)})
	assert.Equal(t, uint16(statusSubdocPathENOENT), st, "no MKDIR_P")
	_, st = mut("q", pathMutation{op: sdDictAdd, value: []byte(`1`)})
	assert.Equal(t, uint16(statusSubdocPathEEXISTS), st)
	out, st = mut("a.b[0]", pathMutation{op: sdDelete})
	assert.Zero(t, st)
	assert.Equal(t, `{"a":{"b":[{"c":true}]},"x.y":2,"q":"s"}`, out)
	_, st = mut("q", pathMutation{op: sdReplace, value: []byte(`nope`)})
	assert.Equal(t, uint16(statusSubdocValueCantInsert), st)
}
