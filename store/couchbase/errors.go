package couchbase

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/store"
)

// ErrAmbiguous marks a write whose outcome the server did not report in
// time (gocb's ambiguous timeout): it may have been made. It always comes
// wrapped with store.ErrUnavailable, and only when reading the document
// back could not tell either (see Store.Apply).
var ErrAmbiguous = errors.New("the write may or may not have been made")

// mapErr turns gocb's errors into the store's, so that no other package
// needs to know them. Errors that say the setup is wrong (a missing bucket
// or collection, bad credentials) keep their own message.
func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, gocb.ErrAmbiguousTimeout):
		return fmt.Errorf("%w: %w: %w: %v", store.ErrUnavailable, store.ErrUnreachable, ErrAmbiguous, err)
	case errors.Is(err, gocb.ErrDurabilityAmbiguous):
		return fmt.Errorf("%w: %w: %v", store.ErrUnavailable, ErrAmbiguous, err)
	case errors.Is(err, gocb.ErrDocumentNotFound):
		return fmt.Errorf("%w: %v", store.ErrNotFound, err)
	case errors.Is(err, gocb.ErrDocumentExists):
		return fmt.Errorf("%w: %v", store.ErrExists, err)
	case errors.Is(err, gocb.ErrCasMismatch):
		return fmt.Errorf("%w: %v", store.ErrCASMismatch, err)
	case errors.Is(err, gocb.ErrTimeout), errors.Is(err, gocb.ErrUnambiguousTimeout),
		errors.Is(err, gocb.ErrServiceNotAvailable), errors.Is(err, gocb.ErrOverload),
		errors.Is(err, gocb.ErrCircuitBreakerOpen):
		return fmt.Errorf("%w: %w: %v", store.ErrUnavailable, store.ErrUnreachable, err)
	case errors.Is(err, gocb.ErrRequestCanceled):
		// Kept in the chain: a command cut short by a signal is told from
		// one that failed by it (gocb's cancellation does not wrap the
		// context's).
		return fmt.Errorf("%w: %w: %w", store.ErrUnavailable, store.ErrUnreachable, err)
	case errors.Is(err, gocb.ErrTemporaryFailure), errors.Is(err, gocb.ErrDocumentLocked),
		errors.Is(err, gocb.ErrDurableWriteInProgress), errors.Is(err, gocb.ErrRateLimitedFailure):
		return fmt.Errorf("%w: %v", store.ErrUnavailable, err) // this key's, or a moment's
	case errors.Is(err, gocb.ErrShutdown):
		return fmt.Errorf("%w: %v", store.ErrClosed, err)
	case netFailure(err):
		return fmt.Errorf("%w: %w: %v", store.ErrUnavailable, store.ErrUnreachable, err)
	}
	return err
}

// netFailure says whether err is a connection failing under a request:
// closed, reset or refused. gocb hands such errors on as they are when the
// request was already sent, which may have reached the server.
func netFailure(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
