package safefile

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
)

// A Limit is a kind of file and the most bytes read from one.
type Limit struct {
	// Kind names the kind of file in errors: "rules file".
	Kind string
	// Max is the largest size accepted, in bytes.
	Max int64
}

// The limits for each kind of file the gate reads. README.md lists them
// ("File size limits"); change both together.
var (
	// Config is the config file. A config of a thousand routes is well
	// under 1 MiB.
	Config = Limit{"config file", 4 << 20}

	// Rules is a route's IP rules file. It admits a file of 200,000
	// rules (the largest max_ip_rules accepted) at 335 bytes a rule,
	// where the CLI writes about 155 with a short description: the 100k
	// rule files of the benchmarks are 15 MB.
	Rules = Limit{"rules file", 64 << 20}

	// Certificate is a certificate with its chain, as PEM.
	Certificate = Limit{"certificate file", 1 << 20}

	// Key is a private key, as PEM; it may share its file with the
	// certificate chain.
	Key = Limit{"key file", 1 << 20}

	// CABundle is a bundle of trusted CAs, as PEM. The system bundle of a
	// Debian machine (about 140 CAs) is 220 KiB.
	CABundle = Limit{"CA bundle", 4 << 20}

	// UpstreamCA is the CA bundle a route trusts for its upstream's
	// certificate; it may be the system bundle.
	UpstreamCA = Limit{"upstream CA file", 4 << 20}

	// CRL is a certificate revocation list, PEM or DER: about 600,000
	// revoked certificates.
	CRL = Limit{"CRL file", 32 << 20}

	// AdminToken is the file holding the admin endpoint's bearer token.
	AdminToken = Limit{"admin token file", 4 << 10}

	// ClientRecord is a client certificate's record in the CA's store.
	ClientRecord = Limit{"client certificate record", 64 << 10}
)

// ReadFile reads the file at path, which must be, after following
// symlinks, a regular file of at most lim.Max bytes. It never blocks on the
// open (a FIFO without a writer, a terminal) and never reads more than
// lim.Max+1 bytes. The error names path and, for a file that is not
// regular or is too large, what it is and the limit for lim.Kind; it
// matches [ErrNotRegular], [ErrTooLarge], or, for a file that cannot be
// opened, the *[fs.PathError] of the open (so [fs.ErrNotExist] for a
// missing file).
func ReadFile(path string, lim Limit) ([]byte, error) {
	f, size, err := Open(path, lim)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// One byte more than the limit tells a file that grew past it (after
	// Open's size check) from one that is exactly at it. The size is only
	// a hint: files in /proc say 0.
	buf := bytes.NewBuffer(make([]byte, 0, size+1))
	if _, err := buf.ReadFrom(io.LimitReader(f, lim.Max+1)); err != nil {
		return nil, fmt.Errorf("reading %s %s: %w", lim.Kind, path, err)
	}
	data := buf.Bytes()
	if int64(len(data)) > lim.Max {
		return nil, errorf(ErrTooLarge, "%s %s grew past %s while being read; the limit for %s is %s",
			lim.Kind, path, formatSize(lim.Max), article(lim.Kind), formatSize(lim.Max))
	}
	return data, nil
}

// Open opens the file at path for reading as [ReadFile] does, and returns
// it with its size when it opened; it refuses what ReadFile refuses, so the
// caller need only bound its reads by lim.Max. The caller closes f.
func Open(path string, lim Limit) (f *os.File, size int64, err error) {
	// Stat first, so that a device or FIFO is refused without being opened
	// at all (opening some devices has effects); then check what was
	// opened, in case the path was replaced in between.
	fi, err := os.Stat(path)
	if err != nil {
		return nil, 0, err
	}
	if err := check(path, fi, lim); err != nil {
		return nil, 0, err
	}
	f, err = os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, err
	}
	if fi, err = f.Stat(); err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("%s %s: %w", lim.Kind, path, err)
	}
	if err := check(path, fi, lim); err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// check refuses fi unless it is a regular file within lim.
func check(path string, fi fs.FileInfo, lim Limit) error {
	if !fi.Mode().IsRegular() {
		return errorf(ErrNotRegular, "%s %s is %s, not a regular file", lim.Kind, path, describe(fi.Mode()))
	}
	if fi.Size() > lim.Max {
		size := formatSize(fi.Size())
		if size == formatSize(lim.Max) {
			size = fmt.Sprintf("%d bytes", fi.Size()) // "4.0 MiB" would read as the limit itself
		}
		return errorf(ErrTooLarge, "%s %s is %s; the limit for %s is %s",
			lim.Kind, path, size, article(lim.Kind), formatSize(lim.Max))
	}
	return nil
}

// describe says what a file of mode m is, for a sentence: "a FIFO".
func describe(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO (named pipe)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link" // not seen: links are followed
	case m&fs.ModeIrregular != 0:
		return "an irregular file"
	}
	return fmt.Sprintf("of mode %v", m)
}

// article puts "a" or "an" before a kind of file: "an upstream CA file".
func article(kind string) string {
	if kind != "" && strings.ContainsRune("aeiouAEIOU", rune(kind[0])) {
		return "an " + kind
	}
	return "a " + kind
}

// formatSize writes n bytes as people read them: "1.2 GiB", "16 MiB",
// "512 bytes".
func formatSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v, i := float64(n)/unit, 0
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	return strings.TrimSuffix(fmt.Sprintf("%.1f", v), ".0") + " " + units[i]
}
