package embedded_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/store/storetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestContract(t *testing.T) {
	var mu sync.Mutex
	dirs := map[*testing.T]string{}
	storetest.Run(t, func(t *testing.T) store.Store {
		mu.Lock()
		dir, ok := dirs[t]
		if !ok {
			dir = t.TempDir()
			dirs[t] = dir
		}
		mu.Unlock()
		s, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(dir, "db", "ordermail.db")})
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestWritesFromAnotherHandleReachTheFeed: a second handle on the file is
// what another process is to the feed (no wake-up in memory), so its writes
// arrive through the poll.
func TestWritesFromAnotherHandleReachTheFeed(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	service, err := embedded.Open(ctx, embedded.Config{Path: path, PollInterval: 50 * time.Millisecond})
	require.NoError(t, err)
	defer service.Close()
	loader, err := embedded.Open(ctx, embedded.Config{Path: path})
	require.NoError(t, err)
	defer loader.Close()

	sub, err := service.Subscribe(ctx, "feed", []string{"inbound"}, store.FeedOptions{})
	require.NoError(t, err)
	defer sub.Close(ctx)
	_, err = loader.Upsert(ctx, "inbound", "order_1", []byte(`{"paymentStatus":"paid"}`))
	require.NoError(t, err)

	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ev, err := sub.Next(wait)
	require.NoError(t, err, "the other handle's write never reached the feed")
	assert.Equal(t, "order_1", ev.Key)
}

// TestFilesArePrivate (finding 15): the orders hold customer data; the
// store's directory and files are its owner's only.
func TestFilesArePrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "o.db")
	s, err := embedded.Open(context.Background(), embedded.Config{Path: path})
	require.NoError(t, err)
	_, err = s.Upsert(context.Background(), "inbound", "o", []byte(`{"email":"ann@example.com"}`))
	require.NoError(t, err)
	defer s.Close()
	for p, want := range map[string]os.FileMode{dir: 0o700, path: 0o600, path + "-wal": 0o600, path + ".writelock": 0o600} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		assert.Equal(t, want, fi.Mode().Perm(), p)
	}
}

// TestLostFileIsNoticed: a deleted database file closes Lost and every
// operation then fails with ErrFileLost.
func TestLostFileIsNoticed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "o.db")
	s, err := embedded.Open(context.Background(), embedded.Config{Path: path, CheckInterval: 10 * time.Millisecond})
	require.NoError(t, err)
	defer s.Close()
	require.NoError(t, os.Remove(path))
	select {
	case <-s.Lost():
	case <-time.After(30 * time.Second):
		t.Fatal("the deleted file went unnoticed")
	}
	_, err = s.Upsert(context.Background(), "inbound", "o", []byte(`{}`))
	assert.ErrorIs(t, err, embedded.ErrFileLost)
}

// The feed hands out nothing it read ahead once its file is lost: the
// outcomes of those events could not be written.
func TestALostFileStopsTheFeedsReadAhead(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	s, err := embedded.Open(ctx, embedded.Config{Path: path, CheckInterval: 10 * time.Millisecond})
	require.NoError(t, err)
	defer s.Close()
	for i := range 5 {
		_, err := s.Upsert(ctx, "inbound", fmt.Sprint("o", i), []byte(`{"paymentStatus":"paid"}`))
		require.NoError(t, err)
	}
	sub, err := s.Subscribe(ctx, "feed", []string{"inbound"}, store.FeedOptions{})
	require.NoError(t, err)
	_, err = sub.Next(ctx) // reads the five ahead
	require.NoError(t, err)
	require.NoError(t, os.Remove(path))
	select {
	case <-s.Lost():
	case <-time.After(30 * time.Second):
		t.Fatal("the deleted file went unnoticed")
	}
	ev, err := sub.Next(ctx)
	assert.ErrorIs(t, err, embedded.ErrFileLost, "handed out %s after the file was lost", ev.Key)
}

// TestGroupCommitIsolatesAFailedGuard: outcomes of many goroutines share
// commits; one whose guard fails writes nothing, and the others commit.
func TestGroupCommitIsolatesAFailedGuard(t *testing.T) {
	ctx := context.Background()
	s, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer s.Close()
	var wg sync.WaitGroup
	errs := make([]error, 200)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cas := uint64(0)
			op := store.OpInsert
			if i%50 == 7 {
				op, cas = store.OpReplace, 12345 // no such document: its guard fails
			}
			_, errs[i] = s.Apply(ctx, []store.Write{
				{Op: store.OpInsert, Collection: "inbound", Key: fmt.Sprint("a", i), Value: []byte(`{}`)},
				{Op: op, Collection: "retry", Key: fmt.Sprint("a", i), Value: []byte(`{"docId":"x"}`), CAS: cas},
			})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		_, getErr := s.Get(ctx, "inbound", fmt.Sprint("a", i))
		if i%50 == 7 {
			assert.ErrorIs(t, err, store.ErrNotFound, i)
			assert.ErrorIs(t, getErr, store.ErrNotFound, "%d: nothing of a failed outcome is written", i)
		} else {
			assert.NoError(t, err, i)
			assert.NoError(t, getErr, i)
		}
	}
}

// TestALargeBatchIsAllOrNothing: a batch of many writes (an order system's
// import) is written whole or not at all, in a commit shared with others,
// whether the guard that fails is of a key that was there or of one the
// batch itself wrote.
func TestALargeBatchIsAllOrNothing(t *testing.T) {
	ctx := context.Background()
	s, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer s.Close()
	keys := func(b int) []string {
		var ks []string
		for i := range 100 {
			ks = append(ks, fmt.Sprintf("b%d-%d", b, i))
		}
		return ks
	}
	batch := func(op store.Op, keys ...string) []store.Write {
		var ws []store.Write
		for i, k := range keys {
			ws = append(ws, store.Write{Op: op, Collection: "inbound", Key: k, Value: []byte(fmt.Sprintf(`{"n":%d}`, i+1))})
		}
		return ws
	}
	// Odd batches fail: an insert of a key that was there (batches 3, 7,
	// 11...), or of a key the batch upserted before (1, 5, 9...).
	const batches = 40
	for b := 1; b < batches; b += 2 {
		_, err := s.Insert(ctx, "inbound", keys(b)[59], []byte(`{"n":0}`))
		require.NoError(t, err)
	}
	errs := make([]error, batches)
	var wg sync.WaitGroup
	for b := range batches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ws := batch(store.OpInsert, keys(b)...)
			if b%4 == 1 {
				ws = append(batch(store.OpUpsert, keys(b)...), store.Write{Op: store.OpInsert, Collection: "inbound", Key: keys(b)[0], Value: []byte(`{}`)})
			}
			_, errs[b] = s.Apply(ctx, ws)
		}()
	}
	wg.Wait()
	for b := range batches {
		_, first := s.Get(ctx, "inbound", keys(b)[0])
		last, lastErr := s.Get(ctx, "inbound", keys(b)[99])
		if b%2 == 1 {
			assert.ErrorIs(t, errs[b], store.ErrExists, "batch %d", b)
			assert.ErrorIs(t, first, store.ErrNotFound, "batch %d: nothing of a failed batch is written", b)
			assert.ErrorIs(t, lastErr, store.ErrNotFound, "batch %d: nothing of a failed batch is written", b)
			continue
		}
		assert.NoError(t, errs[b], "batch %d", b)
		assert.NoError(t, first, "batch %d", b)
		if assert.NoError(t, lastErr, "batch %d", b) {
			assert.JSONEq(t, `{"n":100}`, string(last.Value), "batch %d", b)
		}
	}

	// A repeated key: the later write wins.
	_, err = s.Apply(ctx, batch(store.OpUpsert, append(keys(0), keys(0)[5])...))
	require.NoError(t, err)
	got, err := s.Get(ctx, "inbound", keys(0)[5])
	require.NoError(t, err)
	assert.JSONEq(t, `{"n":101}`, string(got.Value))
}

// TestAGuardedReplaceWritesNothingWhenAGuardFails: an outcome's first
// write, a replace whose guard is in its statement, is made only when every
// other write's guard holds, and fails with its own guard's error: nothing
// of the outcome is written, and no position is used up.
func TestAGuardedReplaceWritesNothingWhenAGuardFails(t *testing.T) {
	ctx := context.Background()
	s, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer s.Close()
	cas, err := s.Apply(ctx, []store.Write{
		{Op: store.OpInsert, Collection: "inbound", Key: "k", Value: []byte(`{"paymentStatus":"paid"}`)},
		{Op: store.OpInsert, Collection: "retry", Key: "k", Value: []byte(`{"docId":"k"}`)},
	})
	require.NoError(t, err)
	confirmed := []byte(`{"paymentStatus":"paid","confirmationEmailSent":true}`)
	unchanged := func(msg string) {
		t.Helper()
		d, err := s.Get(ctx, "inbound", "k")
		require.NoError(t, err)
		assert.Equal(t, cas[0], d.CAS, msg)
		assert.JSONEq(t, `{"paymentStatus":"paid"}`, string(d.Value), msg)
		c, err := s.Counts(ctx)
		require.NoError(t, err)
		assert.Zero(t, c.OrdersConfirmed, msg)
	}

	// The replace's guard holds; the next write's does not.
	_, err = s.Apply(ctx, []store.Write{
		{Op: store.OpReplace, Collection: "inbound", Key: "k", Value: confirmed, CAS: cas[0]},
		{Op: store.OpInsert, Collection: "retry", Key: "k", Value: []byte(`{}`)},
	})
	var we *store.WriteError
	require.ErrorAs(t, err, &we)
	assert.ErrorIs(t, err, store.ErrExists)
	assert.Equal(t, "retry", we.Write.Collection)
	unchanged("a later guard failed")

	// The replace's own guard fails: a CAS that is not the document's.
	_, err = s.Apply(ctx, []store.Write{
		{Op: store.OpReplace, Collection: "inbound", Key: "k", Value: confirmed, CAS: cas[0] + 100},
		{Op: store.OpRemove, Collection: "retry", Key: "k", CAS: cas[1]},
	})
	require.ErrorAs(t, err, &we)
	assert.ErrorIs(t, err, store.ErrCASMismatch)
	assert.Equal(t, "inbound", we.Write.Collection)
	unchanged("its own guard failed")
	_, err = s.Get(ctx, "retry", "k")
	assert.NoError(t, err, "the write after it was not made")

	// Both hold: written, at the next position.
	got, err := s.Apply(ctx, []store.Write{
		{Op: store.OpReplace, Collection: "inbound", Key: "k", Value: confirmed, CAS: cas[0]},
		{Op: store.OpRemove, Collection: "retry", Key: "k", CAS: cas[1]},
	})
	require.NoError(t, err)
	assert.Equal(t, []uint64{cas[1] + 1, cas[1] + 2}, got, "no position was used up by the failed ones")
	d, err := s.Get(ctx, "inbound", "k")
	require.NoError(t, err)
	assert.Equal(t, got[0], d.CAS)
	assert.Equal(t, cas[0], d.Incarnation, "a replace keeps the incarnation")
	c, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, c.OrdersConfirmed, "the typed columns were written with it")

	// A removed document: its old CAS finds nothing.
	require.NoError(t, s.Remove(ctx, "inbound", "k", got[0]))
	_, err = s.Apply(ctx, []store.Write{{Op: store.OpReplace, Collection: "inbound", Key: "k", Value: confirmed, CAS: got[0]}})
	assert.ErrorIs(t, err, store.ErrNotFound)
}

// TestSkipSettledPassesOverWhatNeedsNothing: with SkipSettled the changes
// the watcher ignores unread (a confirmed order, a deletion, a readable
// retry document not flagged and due within a year) are not delivered, yet
// the checkpoint moves past them; every other change comes as before.
func TestSkipSettledPassesOverWhatNeedsNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	path := filepath.Join(t.TempDir(), "o.db")
	s, err := embedded.Open(ctx, embedded.Config{Path: path})
	require.NoError(t, err)
	defer s.Close()
	sub, err := s.Subscribe(ctx, "feed", []string{"inbound", "retry"}, store.FeedOptions{SkipSettled: true})
	require.NoError(t, err)

	soon := time.Now().Add(time.Minute).UnixMilli()
	later := time.Now().Add(2 * 366 * 24 * time.Hour).UnixMilli()
	writes := []struct {
		coll, key, value string // value "": remove
		delivered        bool
	}{
		{"inbound", "a", `{"paymentStatus":"paid"}`, true},
		{"inbound", "a", `{"paymentStatus":"paid","confirmationEmailSent":true}`, false},
		{"inbound", "u", `{"paymentStatus":"pending"}`, true},
		{"retry", "p", fmt.Sprintf(`{"docId":"p","nextAttemptAt":%d}`, soon), false},
		{"retry", "s", `{"docId":"s","ts":1}`, false},
		{"retry", "f", fmt.Sprintf(`{"docId":"f","nextAttemptAt":%d}`, later), true},
		{"retry", "x", `{"docId":"x","attempt":-1,"nextAttemptAt":1}`, true},
		{"retry", "p", fmt.Sprintf(`{"docId":"p","nextAttemptAt":%d,"fireRetry":true}`, soon), true},
		{"retry", "s", "", false},
		{"inbound", "b", `{"paymentStatus":"paid"}`, true},
	}
	var want, got []string
	for _, w := range writes {
		if w.value == "" {
			doc, err := s.Get(ctx, w.coll, w.key)
			require.NoError(t, err)
			require.NoError(t, s.Remove(ctx, w.coll, w.key, doc.CAS))
		} else {
			_, err := s.Upsert(ctx, w.coll, w.key, []byte(w.value))
			require.NoError(t, err)
		}
		if w.delivered {
			want = append(want, w.coll+"/"+w.key+" "+w.value)
		}
		// One at a time: the feed holds a key's latest change only.
		for len(got) < len(want) {
			ev, err := sub.Next(ctx)
			require.NoError(t, err, "waiting for %s", want[len(got)])
			got = append(got, ev.Collection+"/"+ev.Key+" "+string(ev.Value))
			ev.Ack()
		}
	}
	assert.Equal(t, want, got)
	require.NoError(t, sub.Close(ctx))

	// A new subscription under the name starts after all of it.
	sub, err = s.Subscribe(ctx, "feed", []string{"inbound", "retry"}, store.FeedOptions{})
	require.NoError(t, err)
	defer sub.Close(ctx)
	_, err = s.Upsert(ctx, "inbound", "c", []byte(`{"paymentStatus":"paid"}`))
	require.NoError(t, err)
	ev, err := sub.Next(ctx)
	require.NoError(t, err)
	assert.Equal(t, "c", ev.Key, "the checkpoint did not move past what was passed over")
}

// TestFeedStateIsTheKeysState: every change comes with its key's state as
// State reads it in the same snapshot, whichever document changed: an
// order's own change carries its row as the order, without looking it up.
func TestFeedStateIsTheKeysState(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer s.Close()
	// Subscribed before the writes: it wants deletions, so the removal
	// leaves a tombstone for it.
	sub, err := s.Subscribe(ctx, "state", []string{"inbound", "retry", "deadletter"}, store.FeedOptions{})
	require.NoError(t, err)
	defer sub.Close(ctx)
	paid := []byte(`{"email":"a@example.com","paymentStatus":"paid"}`)
	writes := []store.Write{
		{Op: store.OpInsert, Collection: "inbound", Key: "alone", Value: paid},
		{Op: store.OpInsert, Collection: "inbound", Key: "all", Value: paid},
		{Op: store.OpInsert, Collection: "retry", Key: "all", Value: []byte(`{"type":"confirmation","docId":"all","attempt":1,"ts":1,"fireRetry":true}`)},
		{Op: store.OpInsert, Collection: "deadletter", Key: "all", Value: []byte(`{"docId":"all","reason":"x"}`)},
		{Op: store.OpUpsert, Collection: "attempts", Key: "all", Value: []byte(`{"docId":"all","attempts":[]}`)},
		{Op: store.OpInsert, Collection: "retry", Key: "orphan", Value: []byte(`{"type":"confirmation","docId":"orphan","attempt":1,"ts":1,"fireRetry":true}`)},
		{Op: store.OpInsert, Collection: "inbound", Key: "gone", Value: paid},
	}
	_, err = s.Apply(ctx, writes)
	require.NoError(t, err)
	_, err = s.Apply(ctx, []store.Write{{Op: store.OpRemove, Collection: "inbound", Key: "gone"}})
	require.NoError(t, err)

	seen := map[string]bool{}
	for range 6 { // the attempt record is not on the feed; the removed order's insert is overtaken
		ev, err := sub.Next(ctx)
		require.NoError(t, err)
		require.NotNil(t, ev.State, "%s/%s", ev.Collection, ev.Key)
		want, err := s.State(ctx, ev.Key)
		require.NoError(t, err)
		assert.Equal(t, want, *ev.State, "%s/%s", ev.Collection, ev.Key)
		seen[ev.Collection+"/"+ev.Key] = true
		ev.Ack()
	}
	assert.Equal(t, map[string]bool{"inbound/alone": true, "inbound/all": true, "retry/all": true, "deadletter/all": true,
		"retry/orphan": true, "inbound/gone": true}, seen)
}

// TestAnEarlierStoreIsMadePrivate: a store file made by an earlier release
// (or by another tool first) with 0644, and its -wal, are its owner's only
// once opened.
func TestAnEarlierStoreIsMadePrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "o.db")
	s, err := embedded.Open(context.Background(), embedded.Config{Path: path})
	require.NoError(t, err)
	_, err = s.Upsert(context.Background(), "inbound", "o", []byte(`{"email":"ann@example.com"}`))
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.NoError(t, os.WriteFile(path+"-wal", nil, 0o644))
	for _, p := range []string{path, path + "-wal"} {
		require.NoError(t, os.Chmod(p, 0o644))
	}

	s, err = embedded.Open(context.Background(), embedded.Config{Path: path})
	require.NoError(t, err)
	defer s.Close()
	for _, p := range []string{path, path + "-wal"} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), p)
	}
}

// TestAnotherProgramsDatabaseIsRefused: a SQLite file with tables and none
// of the store's is refused by name, and left as it was (no tables added,
// its journal mode and version unchanged).
func TestAnotherProgramsDatabaseIsRefused(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "crm.db")
	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT); INSERT INTO customers (email) VALUES ('ann@example.com')`)
	require.NoError(t, err)
	require.NoError(t, db.Close())
	require.NoError(t, os.Chmod(path, 0o644))
	before, err := os.ReadFile(path)
	require.NoError(t, err)

	_, err = embedded.Open(ctx, embedded.Config{Path: path})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not an ordermail store")
	assert.Contains(t, err.Error(), "customers")
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, before, after, "the file is unchanged")
	_, err = os.Stat(path + "-wal")
	assert.ErrorIs(t, err, os.ErrNotExist, "no write-ahead log was started")
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), fi.Mode().Perm(), "its mode is unchanged: its program's users still read it")
}

// TestAFileThatIsNoDatabaseIsRefused: a file of text given as the store
// (a typo in --store) is refused by name, its content and mode unchanged.
func TestAFileThatIsNoDatabaseIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notes.db")
	notes := []byte("call ann about the meatballs\n" + strings.Repeat("more notes\n", 100))
	require.NoError(t, os.WriteFile(path, notes, 0o644))
	_, err := embedded.Open(context.Background(), embedded.Config{Path: path})
	require.EqualError(t, err, "embedded store "+path+": not an ordermail store: the file is not a SQLite database; nothing was changed")
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, notes, after)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), fi.Mode().Perm())
}

// TestASharedMemoryFileThatIsALinkIsRefused: SQLite's -shm and -wal
// files are its own; a link planted in their place (by another user who
// may write to the directory) is refused by name, and its target left
// alone (before, it was made private, then written by SQLite).
func TestASharedMemoryFileThatIsALinkIsRefused(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "notes")
	require.NoError(t, os.WriteFile(target, []byte("mine"), 0o644))
	require.NoError(t, os.Chmod(target, 0o644))
	path := filepath.Join(dir, "o.db")
	require.NoError(t, os.Symlink(target, path+"-shm"))
	_, err := embedded.Open(context.Background(), embedded.Config{Path: path})
	require.EqualError(t, err, "embedded store "+path+": "+path+"-shm is not a regular file (L---------): remove it (SQLite makes its own)")
	fi, err := os.Stat(target)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), fi.Mode().Perm())
	b, err := os.ReadFile(target)
	require.NoError(t, err)
	assert.Equal(t, "mine", string(b))
}

// TestAStoreNamedByALink: an operator's link to the store file names the
// store it points to: its lock is that store's (a service started by the
// link and one by the real path do not both run the feed), and its files
// beside it are the ones made private.
func TestAStoreNamedByALink(t *testing.T) {
	real := filepath.Join(t.TempDir(), "o.db")
	st, err := embedded.Open(context.Background(), embedded.Config{Path: real})
	require.NoError(t, err)
	require.NoError(t, st.Close())
	require.NoError(t, os.Chmod(real, 0o644))
	link := filepath.Join(t.TempDir(), "link.db")
	require.NoError(t, os.Symlink(real, link))

	byReal, byLink := embedded.NewProcessLock(real), embedded.NewProcessLock(link)
	ok, err := byReal.TryLock()
	require.NoError(t, err)
	require.True(t, ok)
	defer byReal.Unlock()
	ok, err = byLink.TryLock()
	require.NoError(t, err)
	assert.False(t, ok, "one store, one lock, whatever path names it")

	st, err = embedded.Open(context.Background(), embedded.Config{Path: link})
	require.NoError(t, err)
	defer st.Close()
	_, err = st.Upsert(context.Background(), "inbound", "o", []byte(`{}`))
	require.NoError(t, err)
	for _, p := range []string{real, real + "-wal"} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), p)
	}
	_, err = os.Lstat(link + "-wal")
	assert.ErrorIs(t, err, os.ErrNotExist, "nothing beside the link")
}

// TestALockFileThatIsASymlinkIsNotFollowed: the lock files are opened
// without following a symbolic link, which another user who may write to
// the store's directory could plant to have a file of this user emptied.
func TestALockFileThatIsASymlinkIsNotFollowed(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "precious.txt")
	require.NoError(t, os.WriteFile(victim, []byte("keep me"), 0o600))
	path := filepath.Join(dir, "o.db")
	require.NoError(t, os.Symlink(victim, path+".lock"))
	lock := embedded.NewProcessLock(path)
	_, err := lock.TryLock()
	require.Error(t, err)
	assert.ErrorIs(t, err, syscall.ELOOP)
	b, err := os.ReadFile(victim)
	require.NoError(t, err)
	assert.Equal(t, "keep me", string(b))
}

// TestAStoreThatCannotBeCreatedSaysWhy: a directory the user may not write
// to gives "cannot create it", not a missing file.
func TestAStoreThatCannotBeCreatedSaysWhy(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ro")
	require.NoError(t, os.Mkdir(dir, 0o500))
	if os.Geteuid() == 0 {
		// Root may write anywhere but into an immutable directory (CI runs
		// as root: the test runs there too).
		if out, err := exec.Command("chattr", "+i", dir).CombinedOutput(); err != nil {
			t.Skipf("root, and chattr +i refused (no CAP_LINUX_IMMUTABLE?): %v: %s", err, out)
		}
		t.Cleanup(func() { exec.Command("chattr", "-i", dir).Run() })
	}
	_, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(dir, "o.db")})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "cannot create it in "+dir)
	assert.ErrorIs(t, err, os.ErrPermission)
}
