// onnxcomp_run: runs an ONNX model (an onnxcomp-compressed one, with its sidecar beside it) from C++ with no
// Python: registers the onnxcomp custom-op library with onnxruntime, feeds the inputs from .npy files, prints
// every output.
//
//   onnxcomp_run MODEL.onnx [--library libonnxcomp_ops.so] [--threads N] INPUT.npy [INPUT.npy ...]
//
// Inputs are given in the order of the model's inputs. An input file is a NumPy .npy file (format 1.0-3.0,
// little-endian, C order) of float32 ('<f4'), int64 ('<i8') or int32 ('<i4'); its shape is the tensor's shape.
// Output, per model output:
//   output <name> <dtype> [d0,d1,...]
//   <values separated by spaces, float32 printed with 9 significant digits (exact round trip)>
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct NpyArray {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  std::vector<char> data;
};

// The value of `key` in the .npy header dict, e.g. "'<f4'" or "(1, 784)".
std::string HeaderField(const std::string& header, const std::string& key, const std::string& path) {
  const size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw std::runtime_error(path + ": .npy header has no '" + key + "'");
  size_t begin = header.find(':', at);
  if (begin == std::string::npos) throw std::runtime_error(path + ": malformed .npy header");
  ++begin;
  while (begin < header.size() && header[begin] == ' ') ++begin;
  size_t end = begin;
  if (end < header.size() && header[end] == '(') {
    end = header.find(')', end);
    if (end == std::string::npos) throw std::runtime_error(path + ": malformed .npy shape");
    ++end;
  } else {
    while (end < header.size() && header[end] != ',' && header[end] != '}') ++end;
  }
  return header.substr(begin, end - begin);
}

NpyArray ReadNpy(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error(path + ": cannot open");
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (bytes.size() < 10 || std::memcmp(bytes.data(), "\x93NUMPY", 6) != 0) {
    throw std::runtime_error(path + ": not a .npy file");
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_length, header_start;
  if (major == 1) {
    header_length = static_cast<unsigned char>(bytes[8]) | static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8;
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) throw std::runtime_error(path + ": truncated .npy header");
    header_length = 0;
    for (int i = 3; i >= 0; --i) header_length = header_length << 8 | static_cast<unsigned char>(bytes[8 + i]);
    header_start = 12;
  } else {
    throw std::runtime_error(path + ": unsupported .npy version " + std::to_string(major));
  }
  if (header_start + header_length > bytes.size()) throw std::runtime_error(path + ": truncated .npy header");
  const std::string header(bytes.data() + header_start, header_length);

  NpyArray array;
  size_t element_size;
  const std::string descr = HeaderField(header, "descr", path);
  if (descr == "'<f4'") {
    array.type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, element_size = 4;
  } else if (descr == "'<i8'") {
    array.type = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, element_size = 8;
  } else if (descr == "'<i4'") {
    array.type = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, element_size = 4;
  } else {
    throw std::runtime_error(path + ": dtype " + descr + " is not supported (use float32, int64 or int32)");
  }
  if (HeaderField(header, "fortran_order", path) != "False") {
    throw std::runtime_error(path + ": Fortran-ordered arrays are not supported");
  }
  const std::string shape = HeaderField(header, "shape", path);  // "(1, 784)", "(3,)", "()"
  size_t count = 1;
  for (size_t i = 1; i < shape.size();) {
    if (shape[i] >= '0' && shape[i] <= '9') {
      size_t used = 0;
      const long long dim = std::stoll(shape.substr(i), &used);
      array.shape.push_back(dim);
      count *= static_cast<size_t>(dim);
      i += used;
    } else {
      ++i;
    }
  }
  const size_t data_start = header_start + header_length;
  if (bytes.size() - data_start != count * element_size) {
    throw std::runtime_error(path + ": holds " + std::to_string(bytes.size() - data_start) + " data bytes, its shape needs " +
                             std::to_string(count * element_size));
  }
  array.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(data_start), bytes.end());
  return array;
}

const char* TypeName(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    default: return "unsupported";
  }
}

void PrintOutput(const std::string& name, const Ort::Value& value) {
  if (!value.IsTensor()) throw std::runtime_error("output " + name + " is not a tensor");
  const Ort::TensorTypeAndShapeInfo info = value.GetTensorTypeAndShapeInfo();
  const ONNXTensorElementDataType type = info.GetElementType();
  const std::vector<int64_t> shape = info.GetShape();
  std::printf("output %s %s [", name.c_str(), TypeName(type));
  for (size_t i = 0; i < shape.size(); ++i) std::printf(i ? ",%lld" : "%lld", static_cast<long long>(shape[i]));
  std::printf("]\n");
  const size_t count = info.GetElementCount();
  for (size_t i = 0; i < count; ++i) {
    const char* separator = i ? " " : "";
    switch (type) {
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
        std::printf("%s%.9g", separator, static_cast<double>(value.GetTensorData<float>()[i]));
        break;
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64:
        std::printf("%s%lld", separator, static_cast<long long>(value.GetTensorData<int64_t>()[i]));
        break;
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32:
        std::printf("%s%d", separator, value.GetTensorData<int32_t>()[i]);
        break;
      default:
        throw std::runtime_error("output " + name + " has an element type this example does not print");
    }
  }
  std::printf("\n");
}

int Usage() {
  std::fprintf(stderr, "usage: onnxcomp_run MODEL.onnx [--library libonnxcomp_ops.so] [--threads N] INPUT.npy...\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, library;
  int threads = 0;  // 0: onnxruntime's default
  std::vector<std::string> input_files;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "--library" || arg == "--threads") && i + 1 < argc) {
      if (arg == "--library") {
        library = argv[++i];
      } else {
        threads = std::atoi(argv[++i]);
      }
    } else if (arg.rfind("--", 0) == 0) {
      return Usage();
    } else if (model.empty()) {
      model = arg;
    } else {
      input_files.push_back(arg);
    }
  }
  if (model.empty()) return Usage();

  try {
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "onnxcomp_run");
    Ort::SessionOptions options;
    if (threads > 0) options.SetIntraOpNumThreads(threads);
    // Loads the library and calls its RegisterCustomOps; the library stays loaded for the process's life.
    if (!library.empty()) options.RegisterCustomOpsLibrary(library.c_str());
    Ort::Session session(env, model.c_str(), options);

    Ort::AllocatorWithDefaultOptions allocator;
    const size_t input_count = session.GetInputCount();
    if (input_files.size() != input_count) {
      std::fprintf(stderr, "onnxcomp_run: the model has %zu inputs, %zu input files given\n", input_count,
                   input_files.size());
      return 2;
    }
    std::vector<std::string> input_names, output_names;
    for (size_t i = 0; i < input_count; ++i) input_names.push_back(session.GetInputNameAllocated(i, allocator).get());
    for (size_t i = 0; i < session.GetOutputCount(); ++i) {
      output_names.push_back(session.GetOutputNameAllocated(i, allocator).get());
    }

    const Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<NpyArray> arrays;
    std::vector<Ort::Value> inputs;
    for (const std::string& file : input_files) arrays.push_back(ReadNpy(file));
    for (NpyArray& a : arrays) {
      inputs.push_back(Ort::Value::CreateTensor(memory, a.data.data(), a.data.size(), a.shape.data(), a.shape.size(), a.type));
    }
    std::vector<const char*> input_ptrs, output_ptrs;
    for (const std::string& n : input_names) input_ptrs.push_back(n.c_str());
    for (const std::string& n : output_names) output_ptrs.push_back(n.c_str());

    std::vector<Ort::Value> outputs = session.Run(Ort::RunOptions{nullptr}, input_ptrs.data(), inputs.data(),
                                                  inputs.size(), output_ptrs.data(), output_ptrs.size());
    for (size_t i = 0; i < outputs.size(); ++i) PrintOutput(output_names[i], outputs[i]);
  } catch (const std::exception& e) {  // Ort::Exception too: the status message names the failing op
    std::fprintf(stderr, "onnxcomp_run: %s\n", e.what());
    return 1;
  }
  return 0;
}
