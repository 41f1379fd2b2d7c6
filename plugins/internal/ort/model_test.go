package ort

import (
	"testing"
)

func TestModelConfigMaxLength(t *testing.T) {
	pad := func(n int64) *int64 { return &n }
	f := func(name string, c modelConfig, requested, want int, wantCapped bool) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			got, capped, err := c.maxLength(requested)
			if err != nil {
				t.Fatal(err)
			}
			if got != want || capped != wantCapped {
				t.Errorf("maxLength(%d) = %d (capped %v), want %d (capped %v)", requested, got, capped, want, wantCapped)
			}
		})
	}
	bert := modelConfig{ModelType: "bert", MaxPositionEmbeddings: 512}
	xlmr := modelConfig{ModelType: "xlm-roberta", MaxPositionEmbeddings: 514, PadTokenID: pad(1)}
	m3 := modelConfig{ModelType: "xlm-roberta", MaxPositionEmbeddings: 8194, PadTokenID: pad(1)}
	f("bert default", bert, 0, 512, false)
	f("bert shorter", bert, 128, 128, false)
	f("bert capped", bert, 1024, 512, true)
	f("xlm-r default fits 512 after offset", xlmr, 0, 512, false)
	f("xlm-r capped at 512", xlmr, 600, 512, true)
	f("bge-m3 shaped keeps 512 default", m3, 0, 512, false)
	f("bge-m3 shaped allows 8192", m3, 9000, 8192, true)
	f("short position table caps the default silently", modelConfig{ModelType: "bert", MaxPositionEmbeddings: 128}, 0, 128, false)
	f("no position size", modelConfig{}, 0, 512, false)
}
