// Test support: an independent reader of TensorBoard event files (bitwise CRC-32C, a minimal protobuf walker),
// written from the TFRecord and Event formats, sharing no code with xpo/logging/tensorboard.hpp.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace xpo::test::tfevents {

inline std::uint32_t crc32c_bitwise(const std::string& data) {
  std::uint32_t crc = ~0U;
  for (const unsigned char byte : data) {
    crc ^= byte;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78U & (0U - (crc & 1U)));
  }
  return ~crc;
}
inline std::uint32_t unmask(std::uint32_t masked) {
  const std::uint32_t rot = masked - 0xA282EAD8U;
  return (rot >> 17) | (rot << 15);
}
template <class T>
inline T read_le(const std::string& s, std::size_t at) {
  T v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return v;
}
struct Field {
  int number;
  int wire;
  std::uint64_t integer;
  std::string bytes;
};
inline std::vector<Field> parse_message(const std::string& m) {
  std::vector<Field> out;
  std::size_t i = 0;
  const auto varint = [&] {
    std::uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      const auto b = static_cast<unsigned char>(m.at(i++));
      v |= static_cast<std::uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
  };
  while (i < m.size()) {
    const auto key = varint();
    Field f{static_cast<int>(key >> 3), static_cast<int>(key & 7), 0, {}};
    if (f.wire == 0) f.integer = varint();
    else if (f.wire == 1) { f.integer = read_le<std::uint64_t>(m, i); i += 8; }
    else if (f.wire == 5) { f.integer = read_le<std::uint32_t>(m, i); i += 4; }
    else if (f.wire == 2) { const auto n = varint(); f.bytes = m.substr(i, n); i += n; }
    else throw std::runtime_error("bad wire type");
    out.push_back(f);
  }
  return out;
}

// Every record payload of an event file, with both CRCs checked (throws on a bad frame).
inline std::vector<std::string> read_records(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> out;
  for (std::size_t at = 0; at < data.size();) {
    if (at + 12 > data.size()) throw std::runtime_error("truncated record header");
    const auto length = read_le<std::uint64_t>(data, at);
    if (unmask(read_le<std::uint32_t>(data, at + 8)) != crc32c_bitwise(data.substr(at, 8))) throw std::runtime_error("bad length CRC");
    if (at + 16 + length > data.size()) throw std::runtime_error("truncated record");
    std::string payload = data.substr(at + 12, length);
    if (unmask(read_le<std::uint32_t>(data, at + 12 + length)) != crc32c_bitwise(payload)) throw std::runtime_error("bad data CRC");
    out.push_back(std::move(payload));
    at += 12 + length + 4;
  }
  return out;
}

// The scalar summaries of an event file: (tag, value, step).
inline std::vector<std::tuple<std::string, float, std::uint64_t>> read_scalars(const std::filesystem::path& file) {
  std::vector<std::tuple<std::string, float, std::uint64_t>> out;
  for (const auto& record : read_records(file)) {
    std::uint64_t step = 0;
    for (const auto& f : parse_message(record)) {
      if (f.number == 2) step = f.integer;
      if (f.number != 5) continue;
      for (const auto& v : parse_message(f.bytes)) {  // Summary.value (repeated)
        const auto value = parse_message(v.bytes);
        if (value.size() < 2 || value.at(1).number != 2) continue;  // not a simple_value
        float x;
        const auto bits = static_cast<std::uint32_t>(value.at(1).integer);
        std::memcpy(&x, &bits, 4);
        out.emplace_back(value.at(0).bytes, x, step);
      }
    }
  }
  return out;
}

}  // namespace xpo::test::tfevents
