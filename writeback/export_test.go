package writeback

// KnownRowsFor is knownRows, for the tests of package writeback_test.
var KnownRowsFor = knownRows
