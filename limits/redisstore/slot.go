package redisstore

// Redis Cluster puts a key on one of 16384 slots: CRC16 (XMODEM) of the
// key's hash tag — the part between the first '{' and the next '}', when
// that part is not empty — or else of the whole key. The store groups the
// requests of an event by slot, since one script may only touch one slot.

const numSlots = 16384

var crcTable = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

func crc16(s string) uint16 {
	var c uint16
	for i := 0; i < len(s); i++ {
		c = c<<8 ^ crcTable[byte(c>>8)^s[i]]
	}
	return c
}

// hashTag returns the part of key that Redis Cluster hashes.
func hashTag(key string) string {
	for i := 0; i < len(key); i++ {
		if key[i] != '{' {
			continue
		}
		for j := i + 1; j < len(key); j++ {
			if key[j] == '}' {
				if j == i+1 {
					return key
				}
				return key[i+1 : j]
			}
		}
		return key
	}
	return key
}

// slotOf is the Cluster slot of key.
func slotOf(key string) uint16 { return crc16(hashTag(key)) % numSlots }
