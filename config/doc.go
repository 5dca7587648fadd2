// Package config is the model of a spacegate config file and its
// validation: the YAML keys (see README.md for each), their defaults, and
// every problem found, each naming the file and line of the key it
// concerns.
//
// Load and Parse read and check the file itself; they do not open the
// files it names (certificates, keys, rules files, the admin token). The
// gate does that when it builds a snapshot from a Config, and reports the
// problems it finds there at the key that names the file, through
// Config.Errorf.
//
// A Config is a plain value: it holds no open files and no goroutines, and
// is not safe to change while another goroutine reads it. The gate never
// changes one after Load.
package config
