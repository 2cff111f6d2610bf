package labelcap_test

import (
	"fmt"
	"testing"

	"github.com/credflow/credflow/internal/labelcap"
)

// TestCap is B20 for one label: 10,000 distinct values yield at most the
// cap plus "other".
func TestCap(t *testing.T) {
	s := labelcap.New(32)
	distinct := map[string]bool{}
	for i := range 10000 {
		distinct[s.Value(fmt.Sprintf("td%d.example", i))] = true
	}
	if len(distinct) != 33 || !distinct[labelcap.Other] {
		t.Fatalf("%d distinct label values, want 32 and %q", len(distinct), labelcap.Other)
	}
	if got := s.Value("td5.example"); got != "td5.example" {
		t.Fatalf("an admitted value became %q", got)
	}
}
