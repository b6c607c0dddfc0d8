package export

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tqtriage/tqtriage/internal/fixture"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/threatq/internal/wire"
)

// readAll reads r to its end: the indicators, the line numbers of bad
// lines, and the fatal error (nil at a clean end).
func readAll(t *testing.T, r io.Reader) (got []threatq.Indicator, badLines []int, fatal error) {
	t.Helper()
	rd := NewReader(r)
	for {
		in, err := rd.Next()
		var le *LineError
		switch {
		case err == nil:
			got = append(got, in)
		case errors.As(err, &le):
			if le.Line != rd.Line() {
				t.Fatalf("LineError line %d, Line() %d", le.Line, rd.Line())
			}
			badLines = append(badLines, le.Line)
		case err == io.EOF:
			return got, badLines, nil
		default:
			return got, badLines, err
		}
	}
}

func ind(id int64, typ, value string) threatq.Indicator {
	return threatq.Indicator{ID: id, Type: typ, Value: value}
}

func TestReader(t *testing.T) {
	sha := strings.Repeat("ab", 32)
	cases := []struct {
		name   string
		in     string
		want   []threatq.Indicator
		bad    []int
		format Format
		fatal  error
	}{
		{
			name:   "json, simple objects",
			in:     `{"id":1,"type":"SHA-256","value":"` + sha + `"}` + "\n" + `{"id":"2","type":"FQDN","value":"evil.example.com"}` + "\n",
			want:   []threatq.Indicator{ind(1, "SHA-256", sha), ind(2, "FQDN", "evil.example.com")},
			format: JSON,
		},
		{
			name: "json, whole API indicator objects",
			in: `{"id":106767,"value":"http://x.example/a","type":{"id":33,"name":"URL","class":"network"},"type_id":33,"status":{"id":1,"name":"Active"},"score":0,"attributes":[],"sources":[{"name":"S"}]}` + "\n" +
				`{"id":"338","type":{"name":"MD5"},"value":"d41d8cd98f00b204e9800998ecf8427e","status_id":2}`,
			want:   []threatq.Indicator{ind(106767, "URL", "http://x.example/a"), ind(338, "MD5", "d41d8cd98f00b204e9800998ecf8427e")},
			format: JSON,
		},
		{
			name: "json, bad lines are reported and skipped",
			in: strings.Join([]string{
				`{"id":1,"type":"MD5","value":"a"}`,
				``,
				`{"id":0,"type":"MD5","value":"b"}`,       // 3: id not positive
				`{"id":-4,"type":"MD5","value":"b"}`,      // 4
				`{"id":"x7","type":"MD5","value":"b"}`,    // 5: id not numeric
				`{"id":1.5,"type":"MD5","value":"b"}`,     // 6: not an integer
				`{"type":"MD5","value":"b"}`,              // 7: no id
				`{"id":8,"value":"b"}`,                    // 8: no type
				`{"id":9,"type":"MD5"}`,                   // 9: no value
				`{"id":10,"type":"MD5","value":"   "}`,    // 10: blank value
				`{"id":11,"type":{"id":3},"value":"b"}`,   // 11: type object without name
				`{"id":12,"type":"MD5","value":42}`,       // 12: value not a string
				`{"id":13,"type":"MD5","value":"b"`,       // 13: truncated
				`{"id":14,"type":"MD5","value":"b"} junk`, // 14: trailing data
				`id,type,value`,                           // 15: CSV in a JSON file
				`{"id":16,"type":" FQDN ","value":" x.example.com "}`,
			}, "\n"),
			want:   []threatq.Indicator{ind(1, "MD5", "a"), ind(16, "FQDN", "x.example.com")},
			bad:    []int{3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
			format: JSON,
		},
		{
			name:   "csv with header",
			in:     "id,type,value\n1,MD5,d41d8cd98f00b204e9800998ecf8427e\n2,URL,\"http://x.example/a,b?c=\"\"d\"\"\"\n",
			want:   []threatq.Indicator{ind(1, "MD5", "d41d8cd98f00b204e9800998ecf8427e"), ind(2, "URL", `http://x.example/a,b?c="d"`)},
			format: CSV,
		},
		{
			name:   "csv with CRLF, a BOM, blank lines and spaces",
			in:     "\ufeffid,type,value\r\n\r\n 3 , FQDN , a.example.com \r\n\r\n4,MD5,e\r\n",
			want:   []threatq.Indicator{ind(3, "FQDN", "a.example.com"), ind(4, "MD5", "e")},
			format: CSV,
		},
		{
			name:   "csv header in another order, extra column, any case",
			in:     "Value,ID,Type,Comment\nx.example.com,5,FQDN,hello\n",
			want:   []threatq.Indicator{ind(5, "FQDN", "x.example.com")},
			format: CSV,
		},
		{
			name: "csv bad lines",
			in: strings.Join([]string{
				"id,type,value",
				"1,MD5,a",
				"2,MD5",               // 3: too few fields
				"3,MD5,a,b",           // 4: too many
				"x,MD5,a",             // 5: id not numeric
				"0,MD5,a",             // 6: id zero
				"7,,a",                // 7: no type
				"8,MD5,",              // 8: no value
				`9,MD5,"unterminated`, // 9: bad quoting
				`10,MD5,a"b`,          // 10: bare quote
				"id,type,value",       // 11: a repeated header
				"12,SHA-256," + sha,
			}, "\n"),
			want:   []threatq.Indicator{ind(1, "MD5", "a"), ind(12, "SHA-256", sha)},
			bad:    []int{3, 4, 5, 6, 7, 8, 9, 10, 11},
			format: CSV,
		},
		{
			name:   "json with a BOM and CRLF, no final newline",
			in:     "\ufeff{\"id\":1,\"type\":\"MD5\",\"value\":\"a\"}\r\n{\"id\":2,\"type\":\"MD5\",\"value\":\"b\"}",
			want:   []threatq.Indicator{ind(1, "MD5", "a"), ind(2, "MD5", "b")},
			format: JSON,
		},
		{
			name:   "invalid UTF-8 is a bad line",
			in:     "id,type,value\n1,MD5,a\xff\n2,MD5,b\n",
			want:   []threatq.Indicator{ind(2, "MD5", "b")},
			bad:    []int{2},
			format: CSV,
		},
		{name: "empty input", in: "", format: Unknown},
		{name: "only blank lines", in: "\n  \n\r\n", format: Unknown},
		{name: "header only", in: "id,type,value\n", format: CSV},
		{name: "unknown format", in: "\n1,MD5,a\n", fatal: ErrUnknownFormat},
		{name: "csv header without value", in: "id,type\n1,MD5\n", fatal: ErrUnknownFormat},
		{name: "a JSON array is not a line format", in: `[{"id":1,"type":"MD5","value":"a"}]`, fatal: ErrUnknownFormat},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rd := NewReader(strings.NewReader(tc.in))
			var got []threatq.Indicator
			var bad []int
			var fatal error
			for {
				in, err := rd.Next()
				var le *LineError
				if err == nil {
					got = append(got, in)
					continue
				}
				if errors.As(err, &le) {
					bad = append(bad, le.Line)
					if !strings.HasPrefix(le.Error(), "line "+strconv.Itoa(le.Line)+": ") {
						t.Fatalf("error text %q", le.Error())
					}
					continue
				}
				if err != io.EOF {
					fatal = err
				}
				break
			}
			if !equal(got, tc.want) {
				t.Fatalf("indicators %+v, want %+v", got, tc.want)
			}
			if !equalInts(bad, tc.bad) {
				t.Fatalf("bad lines %v, want %v", bad, tc.bad)
			}
			if !errors.Is(fatal, tc.fatal) || (tc.fatal == nil) != (fatal == nil) {
				t.Fatalf("fatal error %v, want %v", fatal, tc.fatal)
			}
			if tc.fatal == nil && rd.Format() != tc.format {
				t.Fatalf("format %v, want %v", rd.Format(), tc.format)
			}
			// The end is sticky.
			if _, err := rd.Next(); (tc.fatal == nil && err != io.EOF) || (tc.fatal != nil && !errors.Is(err, tc.fatal)) {
				t.Fatalf("Next after the end: %v", err)
			}
		})
	}
}

func equal(a, b []threatq.Indicator) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].ID != b[i].ID || a[i].Type != b[i].Type || a[i].Value != b[i].Value || !slices.Equal(a[i].Attributes, b[i].Attributes) {
			return false
		}
	}
	return true
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestValueOverTheJobLimitIsABadLine: a value longer than a job may carry
// (a 200 KB run of '<') is reported with its line and skipped, and the
// lines after it are read; so is an over-long first line.
func TestValueOverTheJobLimitIsABadLine(t *testing.T) {
	lt := strings.Repeat("<", 200_000)
	in := `{"id":1,"type":"URL","value":"` + lt + `"}` + "\n" + `{"id":2,"type":"MD5","value":"a"}` + "\n"
	got, bad, fatal := readAll(t, strings.NewReader(in))
	if fatal != nil || len(got) != 1 || got[0].ID != 2 || !equalInts(bad, []int{1}) {
		t.Fatalf("got %v, bad lines %v, fatal %v; want indicator 2 read and line 1 bad", ids(got), bad, fatal)
	}
	got, bad, fatal = readAll(t, strings.NewReader("id,type,value\n1,URL,"+lt+"\n2,MD5,a\n"))
	if fatal != nil || len(got) != 1 || !equalInts(bad, []int{2}) {
		t.Fatalf("CSV: got %v, bad lines %v, fatal %v", ids(got), bad, fatal)
	}
	first := `{"id":1,"type":"MD5","value":"` + strings.Repeat("a", MaxLineBytes) + `"}` + "\n" + `{"id":2,"type":"MD5","value":"a"}` + "\n"
	got, bad, fatal = readAll(t, strings.NewReader(first))
	if fatal != nil || len(got) != 1 || !equalInts(bad, []int{1}) {
		t.Fatalf("over-long first line: got %v, bad lines %v, fatal %v", ids(got), bad, fatal)
	}
}

func TestOverlongLineIsABadLineAndReadingGoesOn(t *testing.T) {
	long := `{"id":2,"type":"MD5","value":"` + strings.Repeat("a", MaxLineBytes) + `"}`
	// A line of exactly the limit is read (its padding is a field the
	// reader ignores; the value itself is bounded on its own).
	exact := `{"id":3,"type":"MD5","value":"b","pad":"` + strings.Repeat("b", MaxLineBytes-len(`{"id":3,"type":"MD5","value":"b","pad":""}`)) + `"}`
	in := `{"id":1,"type":"MD5","value":"a"}` + "\n" + long + "\r\n" + exact + "\n" + `{"id":4,"type":"MD5","value":"c"}`
	got, bad, fatal := readAll(t, strings.NewReader(in))
	if fatal != nil || len(got) != 3 || got[0].ID != 1 || got[1].ID != 3 || got[2].ID != 4 {
		t.Fatalf("got %d indicators (%v), fatal %v", len(got), ids(got), fatal)
	}
	if !equalInts(bad, []int{2}) {
		t.Fatalf("bad lines %v, want [2]", bad)
	}
	rd := NewReader(strings.NewReader(in))
	_, _ = rd.Next()
	if _, err := rd.Next(); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("err %v, want ErrLineTooLong", err)
	}

	// An overlong last line without a newline, in CSV.
	got, bad, fatal = readAll(t, strings.NewReader("id,type,value\n1,MD5,a\n2,MD5,"+strings.Repeat("x", MaxLineBytes+5)))
	if fatal != nil || len(got) != 1 || !equalInts(bad, []int{3}) {
		t.Fatalf("got %v, bad %v, fatal %v", ids(got), bad, fatal)
	}
}

func ids(in []threatq.Indicator) []int64 {
	out := make([]int64, len(in))
	for i, x := range in {
		out[i] = x.ID
	}
	return out
}

// errAfter is a reader that fails once its data is read.
type errAfter struct {
	r   io.Reader
	err error
}

func (e *errAfter) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		return n, e.err
	}
	return n, err
}

func TestReadErrorsAreFatal(t *testing.T) {
	boom := errors.New("disk on fire")
	got, _, fatal := readAll(t, &errAfter{r: strings.NewReader("id,type,value\n1,MD5,a\n2,MD5,b"), err: boom})
	if !errors.Is(fatal, boom) || len(got) != 1 {
		t.Fatalf("got %v, fatal %v", ids(got), fatal)
	}
}

func TestExportOfTheAPIFixturePage(t *testing.T) {
	// A JSON-lines export made of the fixture page's indicators, one per
	// line, as an export job writes them.
	b := fixture.Read(t, "threatq", "elastic_data_collection_page1.json")
	var page wire.CollectionPage // as the client reads the page
	if err := page.UnmarshalJSON(b); err != nil {
		t.Fatal(err)
	}
	want := make([]threatq.Indicator, len(page.Data))
	for i, in := range page.Data {
		want[i] = threatq.Indicator(in)
	}
	var lines bytes.Buffer
	raw := rawIndicators(t, b)
	for _, r := range raw {
		lines.Write(r)
		lines.WriteByte('\n')
	}
	got, bad, fatal := readAll(t, &lines)
	if fatal != nil || len(bad) != 0 || !equal(got, want) {
		t.Fatalf("got %+v, bad %v, fatal %v; want %+v", got, bad, fatal, want)
	}
}

// generated is an io.Reader of n CSV lines made on the fly.
type generated struct {
	n, i int
	buf  []byte
}

func (g *generated) Read(p []byte) (int, error) {
	for len(g.buf) < len(p) && g.i <= g.n {
		if g.i == 0 {
			g.buf = append(g.buf, "id,type,value\n"...)
		} else {
			g.buf = strconv.AppendInt(g.buf, int64(g.i), 10)
			g.buf = append(g.buf, ",SHA-256,"...)
			g.buf = append(g.buf, strings.Repeat("0", 48)...)
			g.buf = strconv.AppendInt(g.buf, int64(1e15+g.i), 10)
			g.buf = append(g.buf, '\n')
		}
		g.i++
	}
	if len(g.buf) == 0 {
		return 0, io.EOF
	}
	n := copy(p, g.buf)
	g.buf = g.buf[:copy(g.buf, g.buf[n:])]
	return n, nil
}

func TestLargeFileReadsInConstantMemory(t *testing.T) {
	const n = 300_000
	rd := NewReader(&generated{n: n})
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	count := 0
	var peak uint64
	for {
		_, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		count++
		if count%50_000 == 0 {
			runtime.GC()
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
		}
	}
	if count != n {
		t.Fatalf("read %d, want %d", count, n)
	}
	if growth := int64(peak) - int64(base); growth > 8<<20 {
		t.Fatalf("heap grew by %d bytes", growth)
	}
}

// FuzzParseLine feeds arbitrary lines to both line parsers and to the
// reader: nothing panics, and what comes out is always a whole indicator.
func FuzzParseLine(f *testing.F) {
	for _, s := range []string{
		`{"id":1,"type":"SHA-256","value":"abc"}`,
		`{"id":"2","type":{"id":3,"name":"FQDN","class":"network"},"value":"x.example"}`,
		`{"id":1e3,"type":null,"value":null}`,
		`{"id":-1}`,
		`1,MD5,d41d8cd98f00b204e9800998ecf8427e`,
		`"1","URL","http://a,b"`,
		`1,"MD5",a"b`,
		"\ufeffid,type,value",
		"\xff\xfe",
		`{"id":9223372036854775808,"type":"t","value":"v"}`,
	} {
		f.Add([]byte(s))
	}
	cols := csvColumns{id: 0, typ: 1, value: 2, n: 3}
	valid := func(t *testing.T, in threatq.Indicator) {
		if in.ID <= 0 || strings.TrimSpace(in.Type) == "" || strings.TrimSpace(in.Value) == "" ||
			!utf8.ValidString(in.Type) || !utf8.ValidString(in.Value) {
			t.Fatalf("an incomplete indicator got through: %+v", in)
		}
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		if in, err := parseJSONLine(line); err == nil {
			valid(t, in)
		}
		if in, err := parseCSVLine(line, cols); err == nil {
			valid(t, in)
		}
		for _, prefix := range []string{"", "id,type,value\n"} {
			rd := NewReader(io.MultiReader(strings.NewReader(prefix), bytes.NewReader(line), strings.NewReader("\n"+prefix)))
			for range 10_000 {
				in, err := rd.Next()
				if err == nil {
					valid(t, in)
					continue
				}
				var le *LineError
				if errors.As(err, &le) {
					if le.Line < 1 {
						t.Fatalf("line number %d", le.Line)
					}
					continue
				}
				break
			}
		}
	})
}

func rawIndicators(t *testing.T, page []byte) []json.RawMessage {
	t.Helper()
	var p struct {
		Data []json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(page, &p); err != nil {
		t.Fatal(err)
	}
	// One object per line: compact each.
	for i, r := range p.Data {
		var buf bytes.Buffer
		if err := json.Compact(&buf, r); err != nil {
			t.Fatal(err)
		}
		p.Data[i] = buf.Bytes()
	}
	return p.Data
}
