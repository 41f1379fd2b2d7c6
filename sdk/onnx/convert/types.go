package convert

import (
	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
)

// elemType is an ONNX tensor element type; 0 means unknown.
type elemType = int32

const (
	tFloat   = elemType(onnxpb.TensorProto_FLOAT)
	tFloat16 = elemType(onnxpb.TensorProto_FLOAT16)
	tBF16    = elemType(onnxpb.TensorProto_BFLOAT16)
	tInt64   = elemType(onnxpb.TensorProto_INT64)
	tBool    = elemType(onnxpb.TensorProto_BOOL)
	tInt8    = elemType(onnxpb.TensorProto_INT8)
)

// boolOps output booleans whatever their inputs.
var boolOps = map[string]bool{
	"Equal": true, "Less": true, "Greater": true, "LessOrEqual": true, "GreaterOrEqual": true,
	"Not": true, "And": true, "Or": true, "Xor": true, "IsNaN": true, "IsInf": true,
}

// int64Ops output int64 whatever their inputs.
var int64Ops = map[string]bool{
	"Shape": true, "Size": true, "ArgMax": true, "ArgMin": true, "NonZero": true,
}

// dataInput is the input whose element type an op's output takes, for the
// ops where that is not input 0.
var dataInput = map[string]int{"Where": 1}

// inferTypes returns the element type of every value of g it can determine:
// graph inputs and initializers as declared, and node outputs by a small
// set of rules (most ops output their data input's type). It needs no shape
// inference, only element types, which is all the precision passes need.
func inferTypes(g *onnxpb.GraphProto) map[string]elemType {
	types := map[string]elemType{}
	for _, in := range g.GetInput() {
		types[in.GetName()] = in.GetType().GetTensorType().GetElemType()
	}
	for _, t := range g.GetInitializer() {
		types[t.GetName()] = t.GetDataType()
	}
	for _, n := range g.GetNode() {
		var out elemType
		switch op := n.GetOpType(); {
		case n.GetDomain() != "" && n.GetDomain() != "ai.onnx" && n.GetDomain() != "com.microsoft":
			out = 0
		case boolOps[op]:
			out = tBool
		case int64Ops[op]:
			out = tInt64
		case op == "Cast":
			out = elemType(attrInt(n, "to", 0))
		case op == "Constant":
			if a := attr(n, "value"); a != nil && a.GetT() != nil {
				out = a.GetT().GetDataType()
			} else if attr(n, "value_float") != nil || attr(n, "value_floats") != nil {
				out = tFloat
			} else {
				out = tInt64
			}
		case op == "ConstantOfShape":
			out = tFloat
			if a := attr(n, "value"); a != nil && a.GetT() != nil {
				out = a.GetT().GetDataType()
			}
		case op == "DynamicQuantizeLinear":
			out = elemType(onnxpb.TensorProto_UINT8)
		case op == "DynamicQuantizeMatMul" || op == "MatMulIntegerToFloat":
			out = tFloat
		default:
			i := dataInput[op]
			if i < len(n.GetInput()) {
				out = types[n.GetInput()[i]]
			}
		}
		for k, o := range n.GetOutput() {
			if o == "" {
				continue
			}
			// Only the first output follows the rules above; the extra
			// outputs of the ops in these graphs (Dropout's mask,
			// LayerNormalization's saved statistics) are left unknown.
			if k == 0 {
				types[o] = out
			}
		}
	}
	return types
}

// attr returns n's attribute called name, nil if absent.
func attr(n *onnxpb.NodeProto, name string) *onnxpb.AttributeProto {
	for _, a := range n.GetAttribute() {
		if a.GetName() == name {
			return a
		}
	}
	return nil
}

// attrInt returns n's INT attribute called name, or def.
func attrInt(n *onnxpb.NodeProto, name string, def int64) int64 {
	if a := attr(n, name); a != nil {
		return a.GetI()
	}
	return def
}

// attrFloat returns n's FLOAT attribute called name, or def.
func attrFloat(n *onnxpb.NodeProto, name string, def float32) float32 {
	if a := attr(n, name); a != nil {
		return a.GetF()
	}
	return def
}
