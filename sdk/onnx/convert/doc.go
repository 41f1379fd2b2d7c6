// Package convert rewrites fp32 ONNX cross-encoder graphs (onnxpb.ModelProto)
// for inference at lower precision, in Go, without an export step:
//
//   - FP16 and BF16: initializers and compute in half precision, with fp32
//     graph inputs and outputs, and the numerically sensitive operations kept
//     in fp32 (LayerNormalization, Softmax, the final logit and its
//     activation), with Cast nodes at every boundary between the two.
//   - INT8: dynamic quantization of the constant-weight MatMul and Gemm
//     nodes (weights int8 per output channel, activations quantized per
//     call), everything else fp32.
//
// It also holds the IEEE half-precision and bfloat16 codecs the conversions
// and the safetensors reader share.
package convert
