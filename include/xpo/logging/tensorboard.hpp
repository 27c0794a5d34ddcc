// xpo/logging/tensorboard.hpp — TensorBoard event files without a protobuf dependency.
//
// A file is a sequence of TFRecords: uint64 length, uint32 masked CRC-32C of the length bytes, the payload,
// uint32 masked CRC-32C of the payload (all little-endian). Each payload is a serialized tensorflow.Event:
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; float simple_value = 2; TensorProto tensor = 8; SummaryMetadata metadata = 9; }
// Scalars use simple_value; text uses the "text" plugin with a DT_STRING tensor, which TensorBoard's Text tab reads.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include <unistd.h>

#include "xpo/core/errors.hpp"

namespace xpo::logging {

namespace tfrecord {

// CRC-32C (Castagnoli), table-driven.
inline std::uint32_t crc32c(std::string_view data) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78U : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t crc = 0xFFFFFFFFU;
  for (const char ch : data) crc = table[(crc ^ static_cast<unsigned char>(ch)) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFU;
}

inline std::uint32_t masked_crc32c(std::string_view data) {
  const std::uint32_t crc = crc32c(data);
  return ((crc >> 15) | (crc << 17)) + 0xA282EAD8U;
}

template <class T>
void put_le(std::string& out, T value) {
  for (std::size_t i = 0; i < sizeof(T); ++i) out += static_cast<char>((static_cast<std::uint64_t>(value) >> (8 * i)) & 0xFF);
}

inline std::string frame(std::string_view payload) {
  std::string out, length;
  put_le<std::uint64_t>(length, payload.size());
  out += length;
  put_le<std::uint32_t>(out, masked_crc32c(length));
  out.append(payload);
  put_le<std::uint32_t>(out, masked_crc32c(payload));
  return out;
}

}  // namespace tfrecord

namespace proto {
inline void varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
inline void tag(std::string& out, int field, int wire_type) { varint(out, static_cast<std::uint64_t>(field << 3 | wire_type)); }
inline void bytes(std::string& out, int field, std::string_view data) {
  tag(out, field, 2);
  varint(out, data.size());
  out.append(data);
}
inline void f64(std::string& out, int field, double v) {
  tag(out, field, 1);
  std::uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  tfrecord::put_le(out, bits);
}
inline void f32(std::string& out, int field, float v) {
  tag(out, field, 5);
  std::uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  tfrecord::put_le(out, bits);
}
inline void i64(std::string& out, int field, std::int64_t v) {
  tag(out, field, 0);
  varint(out, static_cast<std::uint64_t>(v));
}
}  // namespace proto

// Appends events to <log_dir>/events.out.tfevents.<seconds>.<host>; flushed after every write so a crash loses
// nothing already logged.
class EventWriter {
 public:
  explicit EventWriter(const std::filesystem::path& log_dir) {
    std::error_code ec;
    std::filesystem::create_directories(log_dir, ec);
    char host[256] = "localhost";
    (void)::gethostname(host, sizeof host - 1);
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    path_ = log_dir / ("events.out.tfevents." + std::to_string(std::chrono::duration_cast<std::chrono::seconds>(now).count()) +
                       "." + host);
    out_.open(path_, std::ios::binary | std::ios::app);
    if (!out_) throw FileError(path_.string(), "cannot create the TensorBoard event file");
    std::string event;
    proto::f64(event, 1, wall_time());
    proto::bytes(event, 3, "brain.Event:2");
    write(event);
  }

  void add_scalar(const std::string& tag, double value, std::int64_t step) {
    std::string v;
    proto::bytes(v, 1, tag);
    proto::f32(v, 2, static_cast<float>(value));
    add_value(v, step);
  }

  void add_text(const std::string& tag, const std::string& text, std::int64_t step) {
    std::string plugin, metadata, dim, shape, tensor, v;
    proto::bytes(plugin, 1, "text");        // PluginData.plugin_name
    proto::bytes(metadata, 1, plugin);      // SummaryMetadata.plugin_data
    proto::i64(dim, 1, 1);                  // TensorShapeProto.Dim.size
    proto::bytes(shape, 2, dim);            // TensorShapeProto.dim
    proto::i64(tensor, 1, 7);               // TensorProto.dtype = DT_STRING
    proto::bytes(tensor, 2, shape);         // TensorProto.tensor_shape
    proto::bytes(tensor, 8, text);          // TensorProto.string_val
    proto::bytes(v, 1, tag);
    proto::bytes(v, 8, tensor);
    proto::bytes(v, 9, metadata);
    add_value(v, step);
  }

  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

 private:
  static double wall_time() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  }
  void add_value(const std::string& value, std::int64_t step) {
    std::string summary, event;
    proto::bytes(summary, 1, value);
    proto::f64(event, 1, wall_time());
    proto::i64(event, 2, step);
    proto::bytes(event, 5, summary);
    write(event);
  }
  void write(const std::string& event) {
    const std::string record = tfrecord::frame(event);
    out_.write(record.data(), static_cast<std::streamsize>(record.size()));
    out_.flush();
    if (!out_) throw FileError(path_.string(), "write failed (disk full?)");
  }

  std::filesystem::path path_;
  std::ofstream out_;
};

}  // namespace xpo::logging
