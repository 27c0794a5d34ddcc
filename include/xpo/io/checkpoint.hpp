// xpo/io/checkpoint.hpp — the weights of a Hugging Face checkpoint folder: `model.safetensors` (preferred, as
// transformers does), or shards listed by `model.safetensors.index.json` ({"weight_map": {tensor name: shard file}}). Shard names come from an
// untrusted file: each must be a plain file name inside the folder.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "xpo/core/errors.hpp"
#include "xpo/core/json_file.hpp"
#include "xpo/io/safetensors.hpp"

namespace xpo::io {

// The atomic JSON writer and bounded reader live in core/json_file.hpp; io:: callers keep their names.
using xpo::read_json_file;
using xpo::write_json_file;

class TensorStore {
 public:
  static TensorStore open(const std::filesystem::path& folder) {
    TensorStore store;
    const auto single = folder / "model.safetensors";
    const auto index = folder / "model.safetensors.index.json";
    // transformers' order: a single model.safetensors first, the sharded index only without one.
    if (!std::filesystem::exists(single) && std::filesystem::exists(index)) {
      const auto j = read_json_file(index);
      if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        throw FileError(index.string(), "needs a \"weight_map\" object of tensor name -> shard file");
      std::map<std::string, std::size_t> shard_of_file;
      for (const auto& [name, file] : j["weight_map"].items()) {
        if (!file.is_string()) throw FileError(index.string(), "weight_map[\"" + name + "\"] is not a file name");
        const std::filesystem::path shard = file.get<std::string>();
        if (shard.empty() || shard.has_parent_path() || shard == "." || shard == "..")
          throw FileError(index.string(), "weight_map[\"" + name + "\"] = \"" + shard.string() +
                                              "\" is not a plain file name inside the checkpoint folder");
        auto [it, inserted] = shard_of_file.try_emplace(shard.string(), store.files_.size());
        if (inserted) store.files_.push_back(SafetensorsFile::open(folder / shard));
        if (!store.files_[it->second].contains(name))
          throw FileError((folder / shard).string(), "has no tensor \"" + name + "\", which " + index.filename().string() + " places there");
        store.where_[name] = it->second;
      }
    } else if (std::filesystem::exists(single)) {
      store.files_.push_back(SafetensorsFile::open(single));
      for (const auto& e : store.files_.front().entries()) store.where_[e.name] = 0;
    } else if (std::filesystem::exists(folder / "pytorch_model.bin")) {
      throw FileError(folder.string(), "holds only pytorch_model.bin; xpo reads safetensors (convert it with "
                                       "transformers: model.save_pretrained(folder, safe_serialization=True))");
    } else {
      throw FileError(folder.string(), "has neither model.safetensors nor model.safetensors.index.json");
    }
    return store;
  }

  [[nodiscard]] bool contains(const std::string& name) const { return where_.count(name) != 0; }
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [name, file] : where_) out.push_back(name);
    return out;
  }
  [[nodiscard]] const SafetensorsEntry& entry(const std::string& name) const { return file_of(name).entry(name); }
  [[nodiscard]] torch::Tensor load(const std::string& name, std::optional<torch::ScalarType> dtype,
                                   torch::Device device) const {
    return file_of(name).load(name, dtype, device);
  }
  // Into `dst` in place: bytes straight into its memory when it is a contiguous CPU tensor of the stored dtype,
  // otherwise read, convert and copy.
  void load_into(const std::string& name, torch::Tensor& dst) const {
    const auto& f = file_of(name);
    const auto& e = f.entry(name);
    if (dst.device().is_cpu() && dst.is_contiguous() && dst.scalar_type() == e.dtype.type) {
      f.read_into(name, dst);
    } else {
      dst.copy_(f.load(name, dst.scalar_type(), dst.device()));
    }
  }
  [[nodiscard]] std::uint64_t total_bytes() const {
    std::uint64_t n = 0;
    for (const auto& f : files_)
      for (const auto& e : f.entries()) n += e.end - e.begin;
    return n;
  }

 private:
  const SafetensorsFile& file_of(const std::string& name) const {
    const auto it = where_.find(name);
    if (it == where_.end()) throw Error("checkpoint has no tensor \"" + name + "\"");
    return files_[it->second];
  }
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::size_t> where_;
};

}  // namespace xpo::io
