package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// settings are a subcommand's flags, each with an environment variable
// behind it: the flag wins, then the variable, then the default. Values
// are checked after parsing, and a bad one names both the flag and the
// variable.
type settings struct {
	fs       *flag.FlagSet
	vals     map[string]*setting
	boolPtrs []boolPtr
	errs     []error
	// stdout takes the flag list asked for with -h; stderr takes it with a
	// usage error.
	stdout, stderr io.Writer
}

type setting struct {
	flag, env, def string
	val            *string
	fromEnv        bool
	// envErr is a bad value of env, an error only if the flag does not
	// override it.
	envErr error
}

func newSettings(name, usage string, stdout, stderr io.Writer) *settings {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	s := &settings{fs: fs, vals: map[string]*setting{}, stdout: stdout, stderr: stderr}
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: tqtriage %s\n\nFlags (each also read from the environment variable in brackets; a flag wins):\n", usage)
		fs.PrintDefaults()
	}
	return s
}

// add registers a setting. env may be empty for a flag-only one.
func (s *settings) add(flagName, env, def, help string) {
	v := def
	st := &setting{flag: flagName, env: env, def: def}
	if env != "" {
		if e, ok := os.LookupEnv(env); ok {
			v, st.fromEnv = e, true
		}
		help += " [$" + env + "]"
	}
	st.val = s.fs.String(flagName, v, help)
	// -h shows the built-in default, not the environment's value: that
	// may hold credentials (nats://user:password@host).
	s.fs.Lookup(flagName).DefValue = def
	s.vals[flagName] = st
}

// addBool registers a boolean setting (given as --name, --name=false, or
// true/false/1/0 in the environment).
func (s *settings) addBool(flagName, env string, def bool, help string) {
	v := def
	st := &setting{flag: flagName, env: env, val: new(string)}
	if env != "" {
		if e, ok := os.LookupEnv(env); ok {
			b, err := strconv.ParseBool(strings.TrimSpace(e))
			if err != nil {
				// Reported by parse unless the flag is given: a flag wins.
				st.envErr = fmt.Errorf("--%s ($%s)=%q: want true or false", flagName, env, e)
				b = def
			}
			v, st.fromEnv = b, err == nil
		}
		help += " [$" + env + "]"
	}
	p := s.fs.Bool(flagName, v, help)
	s.fs.Lookup(flagName).DefValue = strconv.FormatBool(def)
	s.vals[flagName] = st
	s.boolPtrs = append(s.boolPtrs, boolPtr{flagName, st.val, p})
}

type boolPtr struct {
	flag string
	str  *string
	b    *bool
}

func (s *settings) parse(args []string) error {
	// The flag package would print a parse error and the flag list itself;
	// main prints the error, once, and the list goes where it belongs:
	// standard output when asked for (-h), standard error with a mistake.
	s.fs.SetOutput(io.Discard)
	err := s.fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		s.fs.SetOutput(s.stdout)
		s.fs.Usage()
		return err
	case err != nil:
		s.fs.SetOutput(s.stderr)
		s.fs.Usage()
		return err
	}
	given := map[string]bool{}
	s.fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, bp := range s.boolPtrs {
		*bp.str = strconv.FormatBool(*bp.b)
		if st := s.vals[bp.flag]; st.envErr != nil && !given[bp.flag] {
			s.errs = append(s.errs, st.envErr)
		}
	}
	return errors.Join(s.errs...)
}

func (s *settings) name(flagName string) string {
	st := s.vals[flagName]
	if st.env == "" {
		return "--" + flagName
	}
	return "--" + flagName + " ($" + st.env + ")"
}

func (s *settings) str(flagName string) string { return strings.TrimSpace(*s.vals[flagName].val) }

func (s *settings) boolean(flagName string) bool {
	b, _ := strconv.ParseBool(*s.vals[flagName].val)
	return b
}

func (s *settings) integer(flagName string, min int) int {
	v := s.str(flagName)
	n, err := strconv.Atoi(v)
	if err != nil || n < min {
		s.errs = append(s.errs, fmt.Errorf("%s=%q: want a whole number of at least %d", s.name(flagName), v, min))
	}
	return n
}

func (s *settings) float(flagName string, min float64) float64 {
	v := s.str(flagName)
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < min {
		s.errs = append(s.errs, fmt.Errorf("%s=%q: want a number of at least %g", s.name(flagName), v, min))
	}
	return f
}

func (s *settings) duration(flagName string) time.Duration {
	v := s.str(flagName)
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		s.errs = append(s.errs, fmt.Errorf("%s=%q: want a duration such as 500ms or 2m", s.name(flagName), v))
	}
	return d
}

// atLeast is a duration setting of at least min.
func (s *settings) atLeast(flagName string, min time.Duration) time.Duration {
	v := s.str(flagName)
	d, err := time.ParseDuration(v)
	if err != nil || d < min {
		s.errs = append(s.errs, fmt.Errorf("%s=%q: want a duration of at least %v, such as 5m", s.name(flagName), v, min))
	}
	return d
}

// required records an error when a setting is empty.
func (s *settings) required(flagName, why string) string {
	v := s.str(flagName)
	if v == "" {
		s.errs = append(s.errs, fmt.Errorf("%s is required %s", s.name(flagName), why))
	}
	return v
}

// err returns every problem found so far.
func (s *settings) err() error { return errors.Join(s.errs...) }

// secretSource is secret as a source that the clients call for each token
// request: a secret given by $env_FILE is read from the file again each
// time, so that a secret rotated in the file is used without a restart.
// The first read is now, with secret's checks (a usage error); a later
// failure is the source's error, which names the variable and the file,
// never the content.
func (s *settings) secretSource(env string, required bool, why string) func() (string, error) {
	v := s.secret(env, required, why)
	file, okF := os.LookupEnv(env + "_FILE")
	if !okF || file == "" || os.Getenv(env) != "" {
		return func() (string, error) { return v, nil }
	}
	return func() (string, error) {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("$%s_FILE: %w", env, err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
}

// secret reads a secret from $env or from the file named by $env_FILE,
// never from a flag. required adds an error when neither is set.
func (s *settings) secret(env string, required bool, why string) string {
	v, okV := os.LookupEnv(env)
	file, okF := os.LookupEnv(env + "_FILE")
	switch {
	case okV && okF && v != "" && file != "":
		s.errs = append(s.errs, fmt.Errorf("both $%s and $%s_FILE are set: set one", env, env))
	case okF && file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			// The path is not a secret; the content never appears.
			s.errs = append(s.errs, fmt.Errorf("$%s_FILE: %w", env, err))
			return ""
		}
		v = strings.TrimRight(string(b), "\r\n")
	}
	if v == "" && required {
		s.errs = append(s.errs, fmt.Errorf("$%s (or $%s_FILE) is required %s", env, env, why))
	}
	return v
}
