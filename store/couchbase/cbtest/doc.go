// Package cbtest is an in-process Couchbase Server for tests: a cluster of
// one to three nodes on 127.0.0.1 that gocb v2 (v2.11.1) and gocbcore v10
// (v10.8.1) connect to unmodified, over TCP, with no Couchbase and no
// Docker on the machine.
//
//	s := cbtest.Start(t, cbtest.Options{Nodes: 3, VBuckets: 64})
//	cluster, _ := gocb.Connect(s.ConnStr(), gocb.ClusterOptions{
//		Authenticator: gocb.PasswordAuthenticator{Username: s.Username(), Password: s.Password()}})
//
// It speaks the protocols at the wire level, as described by the SDK
// source, kv_engine's docs (BinaryProtocol.md, docs/dcp) and RFC 5802/7677,
// and summarised in the project's couchbase-wire-facts.md (cited below as
// §n). Everything is held in memory; Close stops every goroutine.
//
// # Nodes and ports
//
// Each node has its own KV (memcached binary protocol), mgmt (REST) and
// n1ql (query) port on 127.0.0.1, all ephemeral, so the connection string
// names non-default ports and the SDK learns the HTTP ports only from the
// config (§1.3, §1.4). The vBuckets are spread over the nodes in contiguous
// ranges; there are no replicas (numReplicas 0).
//
// With Options.TLS every one of those ports speaks TLS and none other
// listens, as on a cluster that lets clients in only encrypted: the
// configs name the ports kvSSL, mgmtSSL and n1qlSSL (§1.6), ConnStr is
// couchbases://, and the client, over TLS, logs in with PLAIN (§1.9) or
// with a client certificate whose subject names the user (no SASL:
// SDK-RFC 0036; an HTTP request is the certificate's user whatever basic
// auth it carries, gocbcore sending an empty one), as Options.TLS's
// ClientAuth allows.
//
// # Data model
//
// Per bucket and vBucket: documents keyed by (collection id, key) with
// value (the body), extended attributes (xattrs, kept apart from the body:
// an ordered list of X-Key and raw JSON value), flags, datatype, CAS,
// expiry, rev seqno and tombstones; a seqno
// counter that every write takes (KV writes, query UPDATE/DELETE, expiries,
// and one system event per vBucket for each scope or collection created or
// dropped); a failover log (newest first) whose head is the vbuuid; and a
// log of every version by seqno, which DCP reads and Rollback rewinds.
// The vBucket of a key is gocbcore's: ((crc32(key) >> 16) & 0x7fff) mod
// the vBucket count (§9.1). CAS values are nanosecond timestamps of the
// server clock, strictly increasing. Expiry is relative below 30 days, else
// absolute (§5.1); a maxTTL (the collection's; at 0 its bucket's; none at
// -1, as Couchbase 7.6 has it) bounds every expiry, none included, as
// kv_engine's processExpiryTime does. Expired documents are turned into
// expirations on access, by a pager (Options.ExpiryPagerInterval) and by
// ExpireNow.
//
// # Key-value service
//
// Bootstrap: HELLO (grants only Collections, AltRequests, MutationSeqNo,
// XError, SelectBucket, JSON, PreserveTTL, SyncReplication and XATTR —
// never Snappy or clustermap pushes, §3.2, §10.4.4; kv_engine refuses
// xattr sub-document specs without XATTR; buckets advertise the xattr
// and durableWrite capabilities), GET_ERROR_MAP (minimal map), SASL
// LIST_MECHS/AUTH/STEP with SCRAM-SHA512, SCRAM-SHA256 and SCRAM-SHA1
// (the client proof is verified, the server signature returned) and PLAIN,
// SELECT_BUCKET, GET_CLUSTER_CONFIG with a bucket (terse bucket config)
// and without (the global config, §3.8), including the known-version
// extras. Requests on a connection are handled strictly in order (the
// client pipelines SELECT_BUCKET behind SASL_STEP, §3.1).
//
// Collections: GET_COLLECTION_ID (12-byte extras) and
// GET_COLLECTIONS_MANIFEST; LEB128 collection prefixes on keys.
//
// Documents: GET, SET, ADD, REPLACE, DELETE, TOUCH, GAT and NOOP, with
// memcached semantics and real status codes: KEY_ENOENT 0x01, KEY_EEXISTS
// 0x02 (ADD on an existing key, and any CAS mismatch), NOT_MY_VBUCKET 0x07
// with the config as body, NO_BUCKET 0x08, UNKNOWN_COLLECTION 0x88 and
// UNKNOWN_SCOPE 0x8c with {"manifest_uid":…}, UNKNOWN_COMMAND 0x81 for
// anything else (single-path subdoc, counters, append, locking, GET_META
// are not implemented). Mutation responses carry {vbuuid, seqno} when
// asked for. GET, and everything else but the sub-document commands, sees
// the body only; SET and REPLACE keep the document's xattrs (as does a
// query UPDATE), ADD of a new key has none, and DELETE and expiry keep
// only the system xattrs (X-Keys starting with _) in the tombstone
// (kv_engine mutation_context.cc; docs/ExtendedAttributes.md "XATTR
// lifetime"). A SET whose datatype carries the XATTR bit is refused.
//
// Sub-documents (docs/SubDocument.md, daemon/subdocument*.cc):
// SUBDOC_MULTI_LOOKUP (0xd0) with GET, EXISTS and GET_COUNT on xattr
// paths (X-Key or X-Key.path) and body paths, and the whole-document GET,
// which returns the body whatever it holds (PATH_ENOENT when empty); the
// AccessDeleted doc flag reads a tombstone's system xattrs. Each spec gets
// its status and value, the overall status is SUCCESS or
// SUBDOC_MULTI_PATH_FAILURE (0xcc; 0xcd and 0xd3 on a tombstone).
// SUBDOC_MULTI_MUTATION (0xd1) with DICT_ADD, DICT_UPSERT, REPLACE and
// DELETE on xattr or body paths (MKDIR_P creates dictionaries) and the
// whole-document SET; expiry, user flags and the MkDoc (SET semantics,
// body {} when a path needs a root) and Add (ADD) doc flags in the
// extras; no doc flag means REPLACE. All specs apply or none: a new
// version (new CAS and seqno) or SUBDOC_MULTI_PATH_FAILURE with the first
// failing spec's index and status. CAS, durability and preserve-TTL work
// as for SET; without preserve-TTL the request's expiry (0: none)
// replaces the document's. Paths use dots, [n] ([-1] last) and backticks;
// X-Keys follow key_validator.cc. Request checks as kv_engine's validator:
// xattr specs first (SUBDOC_INVALID_XATTR_ORDER 0xd4), at most 16 specs,
// XATTR negotiated (NOT_SUPPORTED), valid X-Keys (XATTR_EINVAL 0x87). Not
// implemented, refused with EINVAL and a context that says so: array
// and counter specs, whole-document DELETE, REPLACE_BODY_WITH_XATTR,
// macro expansion, binary xattr values, virtual xattrs ($document…) and
// the doc flags AccessDeleted (on mutations), CreateAsDeleted,
// ReviveDocument and ReplicaRead.
// A SET or REPLACE with the preserve-TTL frame (§2.3, ID 5) keeps the
// existing document's expiry. A write with a durability frame (ID 1) is
// made at once, as on a cluster whose replicas confirm at once, and its
// seqno is recorded: Rollback refuses to go below it, as no failover loses
// a durable write. Options.DurabilityImpossible (and
// SetDurabilityImpossible) answers such writes
// DURABILITY_IMPOSSIBLE (0xa1), AnswerDurableWritesAmbiguous makes them
// answer SYNC_WRITE_AMBIGUOUS (0xa3) once made, and
// AnswerDurableWritesAmbiguousNotMade without making them (aborted, the
// common case on a real cluster); an unknown level, or
// with Options.MajorityOnly one that persists, is DURABILITY_INVALID_LEVEL
// (0xa0). Other request frames are skipped.
//
// # DCP
//
// DCP_OPEN (producer only; like kv_engine, a second connection with the
// same name on a node closes the first), DCP_CONTROL (the keys gocbcore
// sends, §6.1; enable_stream_id is refused), GET_FAILOVER_LOG,
// GET_ALL_VB_SEQNOS (the receiving node's vBuckets only; with a
// collection id, that collection's high seqno), STREAM_REQ with the
// collection filter JSON (collections or scope) and kv_engine's rollback
// rules (§6.6), CLOSE_STREAM (plus STREAM_END "closed" when the client
// asked for it), BUFFER_ACK flow control (the producer pauses once
// connection_buffer_size bytes of stream messages are unacknowledged) and
// DCP_NOOP after set_noop_interval (or Options.DCPNoopInterval) of silence.
//
// Each stream first sends what exists after its start seqno (a disk
// snapshot), then every later write of its vBucket (memory snapshots), in
// batches of at most 1024 entries, with v1 markers. Values are bodies
// only, unless DCP_OPEN asked for xattrs (flag 0x04): then the xattrs come
// first, encoded as docs/Document.md describes, with the XATTR datatype
// bit (a tombstone's system xattrs too). A disk snapshot's
// marker runs from the start to the batch's end; a memory snapshot's
// covers the items sent, from the first to the last, and a batch with no
// item for the stream sends nothing at all (see the assumptions below).
// Within a snapshot only the latest version of a key is sent
// (deduplication). A connection sends its streams' snapshots in
// the order of their first writes (CAS order), so changes made one after
// another on one node arrive in that order whatever their vBuckets; with
// Options.SyncDCP a KV write is answered only once every DCP connection
// of its bucket has sent it (or flow control holds it, or 1s passed), so
// that the order holds across nodes too. Messages: SNAPSHOT_MARKER, MUTATION, DELETION
// (v2 with delete time, since the expiry opcode implies delete times),
// EXPIRATION, SYSTEM_EVENT (collection and scope create/drop, to
// collection-aware clients whose filter covers them), SEQNO_ADVANCED when a
// disk snapshot's last seqno is not for the stream, and STREAM_END with reasons
// OK (end seqno reached), closed, state changed (vbuuid changed by
// Failover, Rollback or a flush), filter empty (every filtered collection
// dropped), or whatever EndStream injects.
//
// # Management REST
//
// /whoami, /pools, /pools/default, /pools/default/buckets (GET; POST
// creates and answers 202), /pools/default/buckets/<b> (GET, POST update,
// DELETE), …/controller/doFlush, …/scopes (GET manifest with hex uids,
// POST), …/scopes/<s> (DELETE), …/scopes/<s>/collections (POST),
// …/collections/<c> (DELETE, PATCH), /pools/default/b/<b> and the
// streaming config /pools/default/bs/<b> (and bucketsStreaming), which
// sends a new config after every change. Error bodies use ns_server's
// texts where gocb classifies by substring (§8.1, §8.3). HTTP Basic auth
// is required everywhere but GET /pools.
//
// # Query service
//
// GET /admin/ping and POST /query/service (JSON or form body). gocb's
// prepared path is supported: "PREPARE <stmt>" with auto_execute runs the
// statement and returns "prepared" before "results", later calls by name
// run it again; legacy PREPARE without auto_execute returns the
// name/encoded_plan row. Named ($name) and positional ($1, args)
// parameters; scan_consistency is accepted (every statement runs under
// the server lock, so it sees all acknowledged writes, and no other
// client's write lands in the middle of it unless ConflictOnUpdate
// injects one). This is not a
// SQL++ engine: a statement must match one of these shapes (query.go,
// table "shapes"; add a row for a new one):
//
//	EXPLAIN <select | update | delete>
//	CREATE PRIMARY INDEX [IF NOT EXISTS] [name] ON ks [USING GSI] [WITH …]
//	CREATE INDEX [IF NOT EXISTS] name ON ks(key, …) [WHERE cond] [USING GSI] [WITH …]
//	DROP PRIMARY INDEX [IF EXISTS] ON ks / DROP INDEX name [IF EXISTS] ON ks
//	UPDATE ks [[AS] a] SET path = expr, … [UNSET path, …] [WHERE cond] [LIMIT n] [RETURNING [RAW] proj]
//	DELETE FROM ks [[AS] a] [WHERE cond] [LIMIT n] [RETURNING [RAW] proj]
//	SELECT [DISTINCT] [RAW] proj FROM ks [[AS] a] [WHERE cond] [GROUP BY expr, …] [HAVING cond]
//	       [ORDER BY expr [ASC|DESC], …] [LIMIT n] [OFFSET n]
//	SELECT [RAW] proj                                   (no FROM; proj may hold subqueries)
//
// where ks is `bucket`.`scope`.`collection` (or relative to the
// query_context), n any expression of literals and parameters (e.g. LIMIT
// $n, LIMIT 500), proj "*", "a.*" or "expr [AS name]", and expressions use
// literals, $parameters, paths (a.b.c, a[i]), META(a).id/cas/expiration/
// flags, = == != <> < <= > >=, AND OR NOT, IS [NOT] MISSING/NULL/VALUED,
// [NOT] LIKE/IN/BETWEEN, + - * / % ||, the searched CASE WHEN … THEN …
// [ELSE …] END (an index key too: CREATE INDEX ix ON ks((CASE … END),
// META().id), used by a predicate on the same expression), array literals, parenthesised
// SELECT subqueries (e.g. (SELECT RAW COUNT(*) FROM …)[0]), the
// aggregates COUNT(*), COUNT, MIN, MAX, SUM and AVG in a SELECT … FROM
// (with or without GROUP BY; ORDER BY may use them or a projection
// alias), and the functions
// IS_NUMBER, IS_STRING, IS_BOOLEAN, IS_ARRAY, IS_OBJECT, LOWER, UPPER,
// LENGTH, ARRAY_LENGTH, IFMISSING, IFMISSINGORNULL, TOSTRING, TONUMBER and
// NOW_MILLIS, with SQL++'s MISSING/NULL logic and type collation. The
// project adapter's statements — the sweep UPDATE … [LIMIT] RETURNING RAW
// META(r).id, the counts and backlog SELECTs of subqueries (with MIN and
// GROUP BY … ORDER BY COUNT(*) DESC LIMIT 5), the scan SELECT RAW … ORDER
// BY META(d).id LIMIT $limit, CREATE [PRIMARY] INDEX IF NOT EXISTS (on
// inbound, retry and deadletter) and EXPLAIN of the sweep and the scan —
// are these shapes. Anything else, an unknown
// function, or a parameter without a value fails with an error that names
// the statement (3000 → gocb.ErrParsingFailure; 5010 for parameters).
// Other errors: 12003 keyspace not found (gocb.ErrIndexFailure), 4300 index
// exists (gocb.ErrIndexExists), 4040 unknown prepared name (gocb
// re-prepares).
//
// An UPDATE or DELETE is a KV write of each document (new CAS, next seqno,
// seen by DCP); an UPDATE resets the expiry (no preserve_expiry) and keeps
// the document's field order. Documents are visited in key order, so
// LIMIT picks the first keys. The query service writes an UPDATE's
// documents one by one, each by the CAS it read (couchbase/query
// datastore/couchbase, MOP_UPDATE): a document another client wrote or
// removed in between fails alone with 12009 (reason 12033 CAS mismatch or
// 17014 key not found, retry false), the statement goes on with the
// others, and the errors follow their results with status "errors" and
// HTTP 200 (the results went out first). Here that happens only when
// ConflictOnUpdate injects it; a real UPDATE with more than 16 such
// errors stops at the request's error limit (1195), which is not
// modelled.
//
// # Fault injection and inspection
//
// Rollback(bucket, vb, seqno), Failover(bucket, vbs...), EndStream(bucket,
// vb, reason), DropConnections, HangNode(i)/ResumeNode(i),
// ConflictOnUpdate(bucket, scope, coll, key, remove) (the next query
// UPDATE of that document finds it written again, or removed, by another
// client between its read and its write: see the query service above),
// CreateCollection/DropCollection, ExpireNow, FailFailoverLogs(bucket,
// vb, n) (the next n GET_FAILOVER_LOGs of vb answer ETMPFAIL 0x86),
// IgnoreStreamRequests(bucket, vb, n) (the next n STREAM_REQs of vb are
// read and never answered); OpenStreams (open DCP streams per vBucket over
// all connections), StreamOverlaps, StreamOverlapCount and
// MaxStreamsPerVBucket (when two connections streamed one vBucket at
// once; ResetStreamOverlaps starts them again), StreamRequests(bucket, vb) (every STREAM_REQ with its
// position and answer: status, rollback seqno, or ignored), HighSeqno,
// FailoverLog, CollectionID, Indexes, Doc, VBucketOf and NodeOf.
// Options.Trace logs every STREAM_REQ (position and answer) and
// STREAM_END. Work counts the KV operations by name and the statements by
// text since the start or ResetWork, for tests that count the work a
// store asks for.
//
// # Assumptions where the sources are silent (§11)
//
//   - ns_server bodies: /whoami is {"id","domain":"admin","roles"}; a
//     scope or collection change answers 200 {"uid":"<hex manifest uid>"};
//     errors are {"errors":{"_":msg}} with "Scope with name … already
//     exists", "Collection with name … in scope … already exists",
//     "… is not found" (400 or 404).
//   - Query: PREPARE of DDL is accepted and executed like any statement;
//     PREPARE of EXPLAIN is a syntax error (3000), as the query service's
//     grammar has it. EXPLAIN plans are shaped like the docs' example:
//     IndexScan3 with "index", a DistinctScan over a UnionScan when an OR
//     needs one index per branch (as the sweep does), PrimaryScan3 when
//     only the primary index applies, else SequentialScan (7.6, with
//     Options.SequentialScans; without it a statement no index serves,
//     EXPLAIN included, fails with 4120 "No index available", as 7.1 and
//     7.2 always fail it and 7.6 for a user without the role). Index
//     choice: a secondary index applies when the predicate restricts its
//     leading key and implies its WHERE condition (textually). Execution
//     reads every document whatever the plan. HTTP status: 400 for 1050/3xxx, 404 for
//     4040/12003/12021, 401 for 10xxx, 500 otherwise.
//   - DCP snapshots follow kv_engine's code (engines/ep/src/dcp/
//     active_stream.cc: processItemsInner, snapshot, markDiskSnapshot,
//     completeBackfillInner; backfill_by_seqno_disk.cc), not its docs,
//     which allow SEQNO_ADVANCED as a snapshot's only message. A memory
//     batch in which no item passes the stream's filter sends nothing,
//     marker and all: the client learns of the other collections' writes
//     only from GET_ALL_VB_SEQNOS. A memory marker ends at the last item
//     sent, with no SEQNO_ADVANCED (kv_engine sends one after a memory
//     snapshot only to replace trailing prepares and aborts, never
//     written here). One exception (MB-47009): a stream resumed inside a
//     snapshot whose first batch is all filtered away gets a marker from
//     the requested snapshot start to the batch's end and SEQNO_ADVANCED
//     to it. A backfill is one disk snapshot from the start to the
//     vBucket's end, closed by SEQNO_ADVANCED when its last item is not
//     the stream's; a filtered backfill whose collections have nothing
//     after the start is skipped. Here only a stream's first batch is a
//     disk snapshot (a backfill of more than 1024 entries goes on in
//     memory batches), and "nothing after the start" is read from the
//     entries, not from per-collection stats. The first marker starts at
//     the requested start seqno (kv_engine: the requested snapshot start,
//     when lower than the first item). STREAM_REQ with a start of 0 never rolls back unless
//     the strict-vbuuid flag is set (§6.6 rule 2, kv_engine's code).
//     DELETION uses the 21-byte v2 extras once enable_expiry_opcode is on.
//     Tombstones stay until PurgeTombstones drops them and raises the
//     purge seqno: a stream request from a start above 0 and below it
//     rolls back to 0 (rule 3), collection-filtered or not (kv_engine
//     spares a filtered stream whose collections changed nothing after
//     the start).
//   - GET_ALL_VB_SEQNOS with a collection id returns that collection's
//     high seqno per vBucket, its creation's system event included (as
//     kv_engine's ep_engine.cc collectVBucketSequenceNumbers reads it
//     from the collection's manifest entry, which starts at that event).
//     kv_engine leaves out a vBucket that lacks the collection; here every
//     vBucket has every collection of the manifest.
//   - SCRAM: 1024 iterations by default (Options.ScramIterations), a
//     16-byte random salt per mechanism; the raw password, no SASLprep.
//   - Configs include thisNode for the serving node; no nodeUUID or
//     serverGroup; revEpoch 1 and one rev for all configs, raised on every
//     bucket, scope or collection change. No clustermap pushes (0x1f is
//     never granted), so clients learn changes by CCCP polling, NMVB
//     bodies and the HTTP stream. A connection's first global config
//     (no bucket selected) is answered 25ms late: gocbcore v10.8.1's
//     AgentGroup makes its cluster-level agent a config watcher only
//     after its KV agent has started, and that agent would miss a config
//     arriving in between and wait for the next rev, which an idle
//     cbtest never makes (gocb's WaitUntilReady for the management or
//     query service then times out with NOT_READY).
//   - Rollback keeps every version of every document, so the rolled-back
//     state is exactly the state at the target seqno. Flush resets every
//     vBucket to a new vbuuid and seqno 0.
//   - Bucket settings: replicaNumber is stored and reported, but the map
//     never has replicas; numVBuckets in a create request is ignored (all
//     buckets use Options.VBuckets); memcached buckets are refused.
package cbtest
