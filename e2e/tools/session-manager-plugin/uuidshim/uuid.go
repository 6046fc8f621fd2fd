// Package uuid is the part of github.com/twinj/uuid's pre-1.0 API that
// session-manager-plugin uses: a UUID interface (nil-able), New from 16 bytes, random
// version-4 UUIDs, and the string format switch.
package uuid

import (
	"crypto/rand"
	"encoding/hex"
)

// UUID is a 16-byte identifier.
type UUID interface {
	Bytes() []byte
	String() string
}

type array [16]byte

func (a array) Bytes() []byte { return a[:] }

func (a array) String() string {
	h := hex.EncodeToString(a[:])
	if format == CleanHyphen {
		return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
	}
	return h
}

// Format selects how String prints a UUID.
type Format int

const (
	// Clean prints 32 hex digits.
	Clean Format = iota
	// CleanHyphen prints the 8-4-4-4-12 form.
	CleanHyphen
)

var format = CleanHyphen

// SwitchFormat sets the format String uses.
func SwitchFormat(f Format) { format = f }

// New makes a UUID of the first 16 bytes of b.
func New(b []byte) UUID {
	var a array
	copy(a[:], b)
	return a
}

// NewV4 makes a random (version 4) UUID.
func NewV4() UUID {
	var a array
	_, _ = rand.Read(a[:])
	a[6] = (a[6] & 0x0f) | 0x40
	a[8] = (a[8] & 0x3f) | 0x80
	return a
}
