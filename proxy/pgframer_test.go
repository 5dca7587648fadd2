package proxy

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// pgStream returns a stream of n PostgreSQL server messages of random
// types and sizes, and the offsets at which each ends.
func pgStream(rng *rand.Rand, n int) (stream []byte, ends []int) {
	for range n {
		body := make([]byte, rng.IntN(3)*rng.IntN(20000)) // many empty or small, some large
		for i := range body {
			body[i] = byte(rng.Uint32())
		}
		var hdr [5]byte
		hdr[0] = "DTCZNEdG"[rng.IntN(8)]
		binary.BigEndian.PutUint32(hdr[1:], uint32(4+len(body)))
		stream = append(append(stream, hdr[:]...), body...)
		ends = append(ends, len(stream))
	}
	return stream, ends
}

// checkBoundaries feeds stream to a pgFramer in the chunks split gives,
// and checks that at each chunk Boundary names the next message end in
// it, if there is one, as the reference boundary set says.
func checkBoundaries(t *testing.T, stream []byte, isEnd func(int) bool, split func(rest int) int) {
	t.Helper()
	var f pgFramer
	for pos := 0; pos < len(stream); {
		chunk := stream[pos : pos+split(len(stream)-pos)]
		want, wantOK := 0, false
		if pos == 0 || isEnd(pos) {
			wantOK = true
		} else {
			for i := 1; i <= len(chunk); i++ {
				if isEnd(pos + i) {
					want, wantOK = i, true
					break
				}
			}
		}
		got, ok := f.Boundary(chunk)
		if got != want || ok != wantOK {
			t.Fatalf("at %d, chunk of %d: Boundary = %d, %v; want %d, %v", pos, len(chunk), got, ok, want, wantOK)
		}
		f.Advance(chunk)
		pos += len(chunk)
	}
	if !f.atBoundary() {
		t.Fatal("not at a boundary at the end of whole messages")
	}
}

// TestPGFramerSplitsAnywhere: splitting a stream of messages at arbitrary
// points gives the same boundaries, whether chunks are single bytes, end
// inside headers, or span many messages.
func TestPGFramerSplitsAnywhere(t *testing.T) {
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 13))
		stream, ends := pgStream(rng, 200)
		set := make(map[int]bool, len(ends))
		for _, e := range ends {
			set[e] = true
		}
		isEnd := func(i int) bool { return set[i] }
		splits := map[string]func(rest int) int{
			"bytes":  func(int) int { return 1 },
			"random": func(rest int) int { return 1 + rng.IntN(min(rest, 70000)) },
			"small":  func(rest int) int { return 1 + rng.IntN(min(rest, 7)) },
			"whole":  func(rest int) int { return rest },
		}
		for name, split := range splits {
			t.Run(name, func(t *testing.T) { checkBoundaries(t, stream, isEnd, split) })
		}
	}
}

// FuzzPGFramer: for any bytes, however split, Boundary agrees with a
// reference that advances one byte at a time, and the framer's state after
// a stream does not depend on how it was split.
func FuzzPGFramer(f *testing.F) {
	stream, _ := pgStream(rand.New(rand.NewPCG(1, 2)), 5)
	f.Add(stream[:min(len(stream), 300)], uint64(1))
	f.Add([]byte{'D', 0, 0, 0, 3, 'Z', 0, 0, 0, 5, 'I'}, uint64(7)) // a length below 4
	f.Add([]byte{'D', 0xff, 0xff, 0xff, 0xff, 1, 2, 3}, uint64(3))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		// The reference: boundaries seen byte by byte.
		var ref pgFramer
		isEnd := make([]bool, len(data)+1)
		isEnd[0] = true
		for i := range data {
			ref.Advance(data[i : i+1])
			isEnd[i+1] = ref.atBoundary()
		}
		rng := rand.New(rand.NewPCG(seed, 0))
		var g pgFramer
		for pos := 0; pos < len(data); {
			n := 1 + rng.IntN(len(data)-pos)
			chunk := data[pos : pos+n]
			got, ok := g.Boundary(chunk)
			want, wantOK := 0, isEnd[pos]
			for i := 1; !wantOK && i <= n; i++ {
				if isEnd[pos+i] {
					want, wantOK = i, true
				}
			}
			if got != want || ok != wantOK {
				t.Fatalf("at %d, chunk of %d: Boundary = %d, %v; want %d, %v", pos, n, got, ok, want, wantOK)
			}
			g.Advance(chunk)
			pos += n
		}
		if g != ref {
			t.Fatalf("state after split stream %+v, byte by byte %+v", g, ref)
		}
	})
}

// BenchmarkPGFramerAdvance follows a COPY out's stream (CopyData messages
// of about 200 bytes) in reads of 16 KiB, as the engine hands it over; it
// is the framer's whole cost on the bulk path.
func BenchmarkPGFramerAdvance(b *testing.B) {
	row := make([]byte, 5+200)
	row[0] = 'd'
	binary.BigEndian.PutUint32(row[1:], 4+200)
	var stream []byte
	for len(stream) < 1<<20 {
		stream = append(stream, row...)
	}
	b.SetBytes(int64(len(stream)))
	var f pgFramer
	for b.Loop() {
		for p := stream; len(p) > 0; {
			n := min(16<<10, len(p))
			f.Advance(p[:n])
			p = p[n:]
		}
	}
}
