package cbtest

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"hash"
	"testing"
	"time"

	"github.com/couchbase/gocbcore/v10"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The exchanges of RFC 5802 §5 (SHA-1) and RFC 7677 §3 (SHA-256).
func TestSCRAMVectors(t *testing.T) {
	for _, v := range []struct {
		h                                func() hash.Hash
		cnonce, nonce, salt, proof, want string
	}{
		{sha1.New, "fyko+d2lbbFgONRv9qkxdawL", "fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j", "QSXCR+Q6sek8bf92",
			"v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=", "v=rmF9pqV8S7suAoZWja4dJRkFsKQ="},
		{sha256.New, "rOprNGfwEbeRWgbNEkqO", "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", "W22ZaJ0SNY7soEsUEjb6gQ==",
			"dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="},
	} {
		salt, _ := base64.StdEncoding.DecodeString(v.salt)
		creds, err := scramCredsFor(v.h, "pencil", salt, 4096)
		require.NoError(t, err)
		conv, err := scramStart("X", "n,,n=user,r="+v.cnonce, creds)
		require.NoError(t, err)
		// Replace the random server nonce with the RFC's.
		conv.nonce = v.nonce
		conv.serverFirst = "r=" + v.nonce + ",s=" + v.salt + ",i=4096"
		got, err := conv.finish("c=biws,r="+v.nonce+",p="+v.proof, creds, "user")
		require.NoError(t, err)
		assert.Equal(t, v.want, got)
		_, err = conv.finish("c=biws,r="+v.nonce+",p="+v.salt+v.salt, creds, "user")
		assert.Error(t, err, "wrong proof")
	}
}

// Every mechanism the server lists works with gocbcore.
func TestSCRAMMechanismsWithGocbcore(t *testing.T) {
	s := Start(t, Options{VBuckets: 4})
	for _, mech := range []gocbcore.AuthMechanism{gocbcore.ScramSha512AuthMechanism, gocbcore.ScramSha256AuthMechanism, gocbcore.ScramSha1AuthMechanism} {
		ac := &gocbcore.AgentConfig{}
		require.NoError(t, ac.FromConnStr(s.ConnStr()))
		ac.SecurityConfig.Auth = gocbcore.PasswordAuthProvider{Username: s.Username(), Password: s.Password()}
		ac.SecurityConfig.AuthMechanisms = []gocbcore.AuthMechanism{mech}
		ac.BucketName = "orders"
		agent, err := gocbcore.CreateAgent(ac)
		require.NoError(t, err)
		done := make(chan error, 1)
		_, err = agent.WaitUntilReady(time.Now().Add(5*time.Second), gocbcore.WaitUntilReadyOptions{},
			func(_ *gocbcore.WaitUntilReadyResult, err error) { done <- err })
		require.NoError(t, err)
		assert.NoError(t, <-done, string(mech))
		require.NoError(t, agent.Close())
	}
}
