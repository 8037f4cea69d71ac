//go:build !unix

package memstore

const openNoFollow = 0
