// Package export reads the indicators of a ThreatQ export file (or
// standard input): the other way, besides the API, that a collection
// reaches tqtriage.
//
// A file holds one indicator per line, either as JSON objects
// ({"id":…,"type":…,"value":…}, or whole indicator objects as the API
// returns them, with "type" as an object) or as CSV with a header naming
// the columns id, type and value. The format is told from the first
// non-empty line. Reading streams with a bounded line length, so a file of
// any size reads in constant memory.
//
// The reader checks only that each line is well formed: a positive integer
// id and non-blank type and value. Whether a type is supported and a value
// valid for it is the mapping package's business. A bad line is reported
// with its number and skipped; it does not stop the file.
package export

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/threatq"
)

// MaxLineBytes is the longest line read; a longer one is a bad line. A
// ThreatQ indicator object with many attributes fits well within it.
const MaxLineBytes = 1 << 20

// Format is the detected format of a file.
type Format int

// Formats.
const (
	Unknown Format = iota // no non-empty line read yet
	JSON                  // one JSON object per line
	CSV                   // CSV with an id,type,value header
)

func (f Format) String() string {
	switch f {
	case JSON:
		return "json"
	case CSV:
		return "csv"
	}
	return "unknown"
}

// LineError is a bad line: reported, skipped, and reading goes on.
type LineError struct {
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// Errors a LineError may wrap.
var (
	ErrLineTooLong = fmt.Errorf("line longer than %d bytes", MaxLineBytes)
	ErrNotUTF8     = errors.New("not valid UTF-8")
)

// ErrUnknownFormat is returned (fatal) when the first non-empty line is
// neither a JSON object nor a CSV header naming id, type and value.
var ErrUnknownFormat = errors.New("export: unknown format: the first line is neither a JSON object nor a CSV header id,type,value")

// Reader reads indicators from an export file.
type Reader struct {
	br     *bufio.Reader
	buf    []byte // the current line, reused
	line   int
	format Format
	cols   csvColumns
	err    error // sticky fatal error (io.EOF at the end)
}

// csvColumns are the positions of the wanted columns in a CSV header.
type csvColumns struct{ id, typ, value, n int }

// NewReader returns a reader of r. It buffers r itself.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 64<<10)}
}

// Line is the number (1-based) of the line last read: the one that Next
// last returned an indicator or a *LineError for.
func (r *Reader) Line() int { return r.line }

// Format is the file's format, known once Next has read a non-empty line.
func (r *Reader) Format() Format { return r.format }

// Next returns the next indicator. At the end it returns io.EOF. For a bad
// line it returns a *LineError; the caller reports it and calls Next again.
// Any other error (reading failed, the format is unknown) is fatal and
// returned again by later calls.
func (r *Reader) Next() (threatq.Indicator, error) {
	for r.err == nil {
		line, tooLong, err := r.readLine()
		if err != nil && !(err == io.EOF && (len(line) > 0 || tooLong)) {
			if err != io.EOF {
				err = fmt.Errorf("export: read line %d: %w", r.line+1, err)
			}
			r.err = err
			break
		}
		r.line++
		if r.line == 1 {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf"))
		}
		if tooLong {
			// A bad line even before the format is known: JSON lines
			// are told from the next one (a CSV file starts with its
			// header, so a too-long first line is no header).
			return threatq.Indicator{}, &LineError{Line: r.line, Err: ErrLineTooLong}
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if r.format == Unknown {
			if err := r.detect(line); err != nil {
				r.err = err
				break
			}
			if r.format == CSV {
				continue // the header is not an indicator
			}
		}
		in, err := r.parse(line)
		if err != nil {
			return threatq.Indicator{}, &LineError{Line: r.line, Err: err}
		}
		return in, nil
	}
	return threatq.Indicator{}, r.err
}

// readLine reads one line without its end, in r.buf. A line longer than
// MaxLineBytes is read to its end and dropped: tooLong says so.
func (r *Reader) readLine() (line []byte, tooLong bool, err error) {
	r.buf = r.buf[:0]
	for {
		frag, err := r.br.ReadSlice('\n')
		if !tooLong {
			if len(r.buf)+len(frag) > MaxLineBytes+2 { // +2: the line's own \r\n
				tooLong = true
				r.buf = r.buf[:0]
			} else {
				r.buf = append(r.buf, frag...)
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		line = r.buf
		line = bytes.TrimSuffix(line, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if !tooLong && len(line) > MaxLineBytes {
			tooLong = true
		}
		if err == io.EOF && len(r.buf) == 0 && !tooLong {
			return nil, false, io.EOF
		}
		if err != nil && err != io.EOF {
			return nil, false, err
		}
		if tooLong {
			line = nil
		}
		return line, tooLong, err
	}
}

// detect sets the format from the first non-empty line.
func (r *Reader) detect(line []byte) error {
	if line[0] == '{' {
		r.format = JSON
		return nil
	}
	if !utf8.Valid(line) {
		return fmt.Errorf("%w (line %d: %w)", ErrUnknownFormat, r.line, ErrNotUTF8)
	}
	fields, err := splitCSV(line)
	if err != nil {
		return fmt.Errorf("%w (line %d: %w)", ErrUnknownFormat, r.line, err)
	}
	cols := csvColumns{id: -1, typ: -1, value: -1, n: len(fields)}
	for i, f := range fields {
		switch strings.ToLower(strings.TrimSpace(f)) {
		case "id":
			cols.id = setOnce(cols.id, i)
		case "type":
			cols.typ = setOnce(cols.typ, i)
		case "value":
			cols.value = setOnce(cols.value, i)
		}
	}
	if cols.id < 0 || cols.typ < 0 || cols.value < 0 {
		return fmt.Errorf("%w (line %d)", ErrUnknownFormat, r.line)
	}
	r.format, r.cols = CSV, cols
	return nil
}

// setOnce keeps the first column of a name that appears twice.
func setOnce(cur, i int) int {
	if cur >= 0 {
		return cur
	}
	return i
}

func (r *Reader) parse(line []byte) (threatq.Indicator, error) {
	if r.format == CSV {
		return parseCSVLine(line, r.cols)
	}
	return parseJSONLine(line)
}

// parseJSONLine reads one JSON object: {"id","type","value"} or a whole
// ThreatQ indicator.
func parseJSONLine(line []byte) (threatq.Indicator, error) {
	if !utf8.Valid(line) {
		return threatq.Indicator{}, ErrNotUTF8
	}
	if len(line) == 0 || line[0] != '{' {
		return threatq.Indicator{}, errors.New("not a JSON object")
	}
	var in threatq.Indicator
	if err := json.Unmarshal(line, &in); err != nil {
		return threatq.Indicator{}, fmt.Errorf("bad JSON: %w", err)
	}
	return check(in)
}

// parseCSVLine reads one CSV record. Lines without quotes are split
// directly (the same result as encoding/csv, without its per-reader
// buffer); quoted ones go through encoding/csv.
func parseCSVLine(line []byte, cols csvColumns) (threatq.Indicator, error) {
	if !utf8.Valid(line) {
		return threatq.Indicator{}, ErrNotUTF8
	}
	fields, err := splitCSV(line)
	if err != nil {
		return threatq.Indicator{}, err
	}
	if len(fields) != cols.n {
		return threatq.Indicator{}, fmt.Errorf("%d fields, the header has %d", len(fields), cols.n)
	}
	id, err := strconv.ParseInt(strings.TrimSpace(fields[cols.id]), 10, 64)
	if err != nil {
		return threatq.Indicator{}, fmt.Errorf("id %.40q is not an integer", fields[cols.id])
	}
	return check(threatq.Indicator{ID: id, Type: fields[cols.typ], Value: fields[cols.value]})
}

func splitCSV(line []byte) ([]string, error) {
	if bytes.IndexByte(line, '"') < 0 {
		return strings.Split(string(line), ","), nil
	}
	cr := csv.NewReader(bytes.NewReader(line))
	cr.FieldsPerRecord = -1
	rec, err := cr.Read()
	if err != nil {
		var pe *csv.ParseError
		if errors.As(err, &pe) {
			err = pe.Err // its line and column count from this line alone
		}
		return nil, fmt.Errorf("bad CSV: %w", err)
	}
	// A quoted field may hold a newline only across lines, which this
	// line-bounded reader does not join: anything left is an error.
	if _, err := cr.Read(); err != io.EOF {
		return nil, errors.New("bad CSV: more than one record on the line")
	}
	return rec, nil
}

// check trims the type and value and requires what every indicator needs.
func check(in threatq.Indicator) (threatq.Indicator, error) {
	in.Type = strings.TrimSpace(in.Type)
	in.Value = strings.TrimSpace(in.Value)
	switch {
	case in.ID <= 0:
		return threatq.Indicator{}, fmt.Errorf("id %d is not a positive integer", in.ID)
	case in.Type == "":
		return threatq.Indicator{}, errors.New("no type")
	case in.Value == "":
		return threatq.Indicator{}, errors.New("no value")
	case len(in.Type) > message.MaxTypeBytes:
		return threatq.Indicator{}, fmt.Errorf("the type is %d bytes long; at most %d are accepted", len(in.Type), message.MaxTypeBytes)
	case len(in.Value) > message.MaxValueBytes:
		return threatq.Indicator{}, fmt.Errorf("the value is %d bytes long; at most %d are accepted", len(in.Value), message.MaxValueBytes)
	}
	return in, nil
}
