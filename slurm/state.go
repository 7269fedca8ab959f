package slurm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Submission is one sbatch call recorded in a run directory's <dir>/slurm/jobs.json.
type Submission struct {
	Seq         int       `json:"seq"`
	JobID       string    `json:"job_id"`
	Kind        string    `json:"kind"` // "sweep" or "train"
	Name        string    `json:"name"`
	Dir         string    `json:"dir"`    // this submission's files (script, shards)
	Script      string    `json:"script"` // the sbatch script, as submitted
	Tasks       int       `json:"tasks"`  // array tasks (sweep) or 1 (train)
	Points      int       `json:"points,omitempty"`
	Concurrency int       `json:"concurrency,omitempty"`
	Resume      bool      `json:"resume,omitempty"`
	SweepFile   string    `json:"sweep_file,omitempty"` // the sweep file given (its copy is Dir/sweep.toml)
	SubmittedAt time.Time `json:"submitted_at"`
}

// State is the content of <dir>/slurm/jobs.json: every submission made for the run directory, oldest first.
type State struct {
	Version     int          `json:"version"`
	Dir         string       `json:"dir"`
	Submissions []Submission `json:"submissions"`
}

const stateVersion = 1

// SlurmDir is where mdnctl keeps a run directory's Slurm files.
func SlurmDir(runDir string) string { return filepath.Join(runDir, "slurm") }

func statePath(runDir string) string { return filepath.Join(SlurmDir(runDir), "jobs.json") }

// LoadState reads <dir>/slurm/jobs.json; a directory never submitted gives an empty State and ok=false.
func LoadState(runDir string) (State, bool, error) {
	b, err := os.ReadFile(statePath(runDir))
	if errors.Is(err, os.ErrNotExist) {
		return State{Version: stateVersion, Dir: runDir}, false, nil
	}
	if err != nil {
		return State{}, false, fmt.Errorf("read Slurm state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, false, fmt.Errorf("%s: not a Slurm state file: %w", statePath(runDir), err)
	}
	if s.Version != stateVersion {
		return State{}, false, fmt.Errorf("%s: state version %d, this mdnctl reads %d", statePath(runDir), s.Version, stateVersion)
	}
	return s, true, nil
}

// save writes the state atomically (temp file + rename).
func (s *State) save(runDir string) error {
	if err := os.MkdirAll(SlurmDir(runDir), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", SlurmDir(runDir), err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(statePath(runDir), append(b, '\n'))
}

func (s *State) nextSeq() int {
	n := 0
	for _, x := range s.Submissions {
		if x.Seq > n {
			n = x.Seq
		}
	}
	return n + 1
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
