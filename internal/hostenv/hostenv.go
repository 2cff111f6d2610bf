// Package hostenv records the machine a measurement came from (CPU,
// kernel, Go version, CPU pressure before and after), for the benchmark
// harness and the soak test, whose results carry it.
package hostenv

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Environment describes the machine a result came from.
type Environment struct {
	Time       time.Time `json:"time"`
	CPU        string    `json:"cpu"`
	NumCPU     int       `json:"num_cpu"`
	GOMAXPROCS int       `json:"gomaxprocs"`
	Kernel     string    `json:"kernel"`
	GoVersion  string    `json:"go_version"`
	ULP        string    `json:"tcp_available_ulp"`
	// PressureBefore and PressureAfter are /proc/pressure/cpu's "some
	// avg10" at the start and end of the run. The run is flagged noisy when
	// something else loaded the machine before it began (above 10); the
	// figure after includes the run's own load on two cores.
	PressureBefore float64 `json:"cpu_pressure_before"`
	PressureAfter  float64 `json:"cpu_pressure_after"`
	Noisy          bool    `json:"noisy"`
}

// Capture reads the environment at the start of a run; call Finish at its
// end.
func Capture() *Environment {
	return &Environment{
		Time:           time.Now().UTC(),
		CPU:            cpuModel(),
		NumCPU:         runtime.NumCPU(),
		GOMAXPROCS:     runtime.GOMAXPROCS(0),
		Kernel:         firstLine("/proc/sys/kernel/osrelease"),
		GoVersion:      runtime.Version(),
		ULP:            firstLine("/proc/sys/net/ipv4/tcp_available_ulp"),
		PressureBefore: cpuPressure(),
	}
}

// Finish records the pressure at the end of the run and flags it noisy.
func (e *Environment) Finish() {
	e.PressureAfter = cpuPressure()
	e.Noisy = e.PressureBefore > 10
}

func firstLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(line)
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// cpuPressure returns "some avg10" from /proc/pressure/cpu, or -1.
func cpuPressure() float64 {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return -1
	}
	for f := range strings.FieldsSeq(string(b)) {
		if v, ok := strings.CutPrefix(f, "avg10="); ok {
			if x, err := strconv.ParseFloat(v, 64); err == nil {
				return x
			}
		}
	}
	return -1
}
