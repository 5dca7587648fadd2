package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/spacegate/spacegate/internal/safefile"
)

// Load reads, decodes and validates the config file at path, resolving
// relative paths against its directory. It reports every problem it finds,
// each naming file and line, joined with errors.Join. It does not open the
// files the config names: the gate's snapshot does.
func Load(path string) (*Config, error) {
	cfg, err := LoadPartial(path)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// LoadPartial is Load for `spacegate check`: along with every problem it
// returns the config as far as it could be decoded and validated, so that
// the caller can go on to the files it names and list their problems in
// the same run. The config is nil only when the file cannot be read or is
// not YAML at all. Such a config must not be served.
func LoadPartial(path string) (*Config, error) {
	data, err := safefile.ReadFile(path, safefile.Config)
	if _, ok := errors.AsType[*fs.PathError](err); ok {
		// A FIFO, a device or a directory given as the config fails at once.
		return nil, fmt.Errorf("reading config: %w", err)
	}
	if err != nil {
		return nil, err // the error names the file
	}
	return parse(data, path)
}

// Parse decodes and validates data as a config file named file, against
// whose directory relative paths are resolved.
func Parse(data []byte, file string) (*Config, error) {
	cfg, err := parse(data, file)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// parse returns the config with relative paths resolved and every
// problem found. The config is nil only when data is not YAML at all.
func parse(data []byte, file string) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, yamlProblems(file, err)
	}
	cfg := &Config{Path: file, root: &root}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var decodeErr error
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		// A TypeError still fills every field it could; keep validating so
		// that `check` shows all problems in one run.
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, yamlProblems(file, err)
		}
		decodeErr = yamlProblems(file, err)
	}
	cfg.trimServerNameDots()
	v := validator{file: file, root: &root}
	cfg.validate(&v)
	cfg.resolvePaths()
	return cfg, errors.Join(decodeErr, errors.Join(v.errs...))
}

// Key names a key of the config file by its path from the top, map keys
// as strings and list items as indexes: Key{"routes", 0, "ip_rules_file"}.
type Key []any

// Errorf returns an *Error at the line of key, for the problems found
// later in the files the config names (a rules file that does not exist
// is reported at the route's ip_rules_file). When key is not in the file,
// the line is that of its deepest ancestor that is, or 0.
func (c *Config) Errorf(key Key, format string, args ...any) error {
	return &Error{File: c.Path, Line: lineOf(c.root, key...), Msg: fmt.Sprintf(format, args...)}
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// yamlProblems turns a yaml.v3 error into one Error per line it reports.
func yamlProblems(file string, err error) error {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	var errs []error
	for _, m := range msgs {
		ce := &Error{File: file, Msg: strings.TrimPrefix(m, "yaml: ")}
		if sm := yamlLine.FindStringSubmatch(m); sm != nil {
			ce.Line, _ = strconv.Atoi(sm[1])
			ce.Msg = sm[2]
		}
		ce.Msg = strings.Replace(ce.Msg, "in type config.", "in ", 1)
		errs = append(errs, ce)
	}
	return errors.Join(errs...)
}

// lineOf returns the line of the value at path in a decoded document, or of
// the deepest ancestor that exists, or 0.
func lineOf(n *yaml.Node, path ...any) int {
	if n == nil {
		return 0
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, p := range path {
		var next *yaml.Node
		switch k := p.(type) {
		case string:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == k {
						next = n.Content[i+1]
						line = n.Content[i].Line
						break
					}
				}
			}
		case int:
			if n.Kind == yaml.SequenceNode && k < len(n.Content) {
				next = n.Content[k]
				line = next.Line
			}
		}
		if next == nil {
			return line
		}
		n = next
	}
	return line
}
