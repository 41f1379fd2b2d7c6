package auth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// write writes content to a new file in dir and returns its path.
func write(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const (
	keyA = "sk-AAAAaaaa0000._~+/=="
	keyB = "0123456789abcdefXYZ"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	absent := filepath.Join(dir, "absent")
	good := write(t, dir, "good", "\n  "+keyA+"  \r\n\n"+keyB+"\n")
	other := write(t, dir, "other", keyB+"\n")
	f := func(name string, c Config, wantKeys int, wantErr string) {
		t.Helper()
		if c.DefaultTokenFile == "" {
			c.DefaultTokenFile = absent
		}
		k, note, err := Load(c)
		if wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), wantErr) {
				t.Errorf("%s: err %v, want it to say %q", name, err, wantErr)
			}
			if err != nil && (strings.Contains(err.Error(), keyA) || strings.Contains(err.Error(), "short-key")) {
				t.Errorf("%s: the error shows a key: %v", name, err)
			}
			return
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			return
		}
		if strings.Contains(note, keyA) || strings.Contains(note, keyB) {
			t.Errorf("%s: the log note shows a key: %s", name, note)
		}
		if (k == nil) != (wantKeys == 0) || (k != nil && k.Len() != wantKeys) {
			t.Errorf("%s: keys %v, want %d (%s)", name, k, wantKeys, note)
		}
	}
	f("nothing configured, no default file", Config{}, 0, "")
	f("key file", Config{KeyFile: good}, 2, "")
	f("token file", Config{TokenFile: other}, 1, "")
	f("both files", Config{KeyFile: good, TokenFile: other}, 3, "")
	f("default secrets file", Config{DefaultTokenFile: other}, 1, "")
	f("an explicit file wins over the default", Config{KeyFile: good, DefaultTokenFile: other}, 2, "")
	f("disabled", Config{KeyFile: good, Disabled: true}, 0, "")
	f("disabled with a broken file", Config{KeyFile: absent, Disabled: true}, 0, "")
	f("missing", Config{KeyFile: absent}, 0, "cannot read key file")
	f("missing token file", Config{TokenFile: absent}, 0, "cannot read key file")
	f("a directory", Config{KeyFile: dir}, 0, "cannot read key file")
	f("empty", Config{KeyFile: write(t, dir, "empty", "")}, 0, "holds no key")
	f("blank lines only", Config{TokenFile: write(t, dir, "blank", "\n \n\t\n")}, 0, "holds no key")
	f("short", Config{KeyFile: write(t, dir, "short", keyA+"\nshort-key\n")}, 0, "line 2: the key is 9 characters long; at least 16")
	f("space inside", Config{KeyFile: write(t, dir, "space", "0123456789 abcdefgh")}, 0, "character 11 is outside")
	f("quote", Config{KeyFile: write(t, dir, "quote", `0123456789"abcdefgh`)}, 0, "character 11 is outside")
	f("padding inside", Config{KeyFile: write(t, dir, "pad", "0123456789=abcdefgh")}, 0, "character 12 is outside")
	f("padding only", Config{KeyFile: write(t, dir, "padonly", "================")}, 0, "character 1 is outside")
	f("non-ASCII", Config{KeyFile: write(t, dir, "utf8", "0123456789abcdéfgh")}, 0, "character 15 is outside")
	f("default file unreadable", Config{DefaultTokenFile: filepath.Join(good, "x")}, 0, "default token file")
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	k, _, err := Load(Config{KeyFile: write(t, dir, "k", keyA+"\n"+keyB+"\n"), DefaultTokenFile: filepath.Join(dir, "absent")})
	if err != nil {
		t.Fatal(err)
	}
	f := func(token string, want bool) {
		t.Helper()
		if got := k.Check([]byte(token)); got != want {
			t.Errorf("Check(%q) = %v, want %v", token, got, want)
		}
	}
	f(keyA, true)
	f(keyB, true)
	f("", false)
	f(keyA[:len(keyA)-1], false)
	f(keyA+"=", false)
	f(strings.ToUpper(keyB), false)
	f(keyB+keyA, false)
	f(" "+keyB, false)
}
