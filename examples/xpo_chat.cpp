// xpo-chat — talk to a checkpoint, as `trl chat` does: the model's chat template, streamed answers, sampling
// flags, and the commands /clear (forget the conversation), /save FILE.json (write it), /help and /exit.
// `--prompt "..."` answers once and exits (for scripts and tests). Lines come from the terminal or from stdin.
#include <xpo/xpo.hpp>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include <unistd.h>

namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

struct ChatArgs {
  std::string model_name_or_path;
  std::string prompt;
  std::string system_prompt;
  std::int64_t max_new_tokens = 256;
  double temperature = 0.9;
  std::int64_t top_k = 0;
  double top_p = 1.0;
  std::optional<double> min_p;
  std::int64_t seed = 42;
  std::string device = "cpu";
  std::string dtype = "float32";
};

class Chat {
 public:
  Chat(const ChatArgs& args)
      : args_(args),
        model_(xpo::models::load_causal_lm(args.model_name_or_path, torch::Device(args.device), dtype_of(args.dtype))),
        tokenizer_(xpo::text::Tokenizer::from_pretrained(args.model_name_or_path)),
        chat_(tokenizer_.chat_template() ? xpo::text::ChatTemplate::of(tokenizer_)
                                         : xpo::text::ChatTemplate(std::string(xpo::text::kSimpleChatTemplate))),
        gen_(xpo::compat::make_generator(torch::Device(args.device), static_cast<std::uint64_t>(args.seed))) {
    clear();
    const auto& special = tokenizer_.special_tokens();
    eos_ = special.generation_eos_ids;
    if (eos_.empty() && special.eos_id) eos_.push_back(*special.eos_id);
    pad_ = special.pad_id ? *special.pad_id : (eos_.empty() ? 0 : eos_.front());
  }

  void clear() {
    messages_ = ordered_json::array();
    if (!args_.system_prompt.empty()) messages_.push_back({{"role", "system"}, {"content", args_.system_prompt}});
  }

  // Adds the user's message, streams the answer to `out` and keeps it in the conversation.
  std::string answer(const std::string& user, std::FILE* out) {
    messages_.push_back({{"role", "user"}, {"content", user}});
    std::string text;
    try {
      const auto prompt = xpo::text::prepare_prompt(tokenizer_, messages_, &chat_, {}, "the conversation");
      const auto device = torch::Device(args_.device);
      const auto ids = torch::tensor(prompt.ids, torch::kLong).unsqueeze(0).to(device);
      const auto mask = torch::ones_like(ids);
      xpo::generation::SamplingOptions o;
      // A chat answers within the context: the answer budget shrinks as the conversation grows.
      const auto room = model_->config().max_position_embeddings - static_cast<std::int64_t>(prompt.ids.size());
      if (room < 1)
        throw xpo::ConfigError("the conversation (" + std::to_string(prompt.ids.size()) + " tokens) fills the model's context of " +
                               std::to_string(model_->config().max_position_embeddings) + " tokens");
      o.max_new_tokens = std::min(args_.max_new_tokens, room);
      o.temperature = args_.temperature;
      o.top_k = args_.top_k;
      o.top_p = args_.top_p;
      o.min_p = args_.min_p;
      o.eos_token_ids = eos_;
      o.pad_token_id = pad_;
      o.validate();
      std::vector<std::int64_t> answer_ids;
      std::size_t shown = 0;
      xpo::generation::generate(model_, ids, mask, o, gen_, [&](std::int64_t, const torch::Tensor& tokens, const torch::Tensor& finished) {
        const auto t = tokens[0].item<std::int64_t>();
        if (finished[0].item<bool>() && std::find(eos_.begin(), eos_.end(), t) == eos_.end()) return;
        answer_ids.push_back(t);
        const auto decoded = tokenizer_.decode(answer_ids, /*skip_special_tokens=*/true);
        // Hold back a trailing U+FFFD: the next token may complete the UTF-8 sequence.
        if (decoded.size() >= 3 && decoded.compare(decoded.size() - 3, 3, "\xEF\xBF\xBD") == 0) return;
        if (decoded.size() > shown) {
          std::fwrite(decoded.data() + shown, 1, decoded.size() - shown, out);
          std::fflush(out);
          shown = decoded.size();
        }
      });
      const auto full = tokenizer_.decode(answer_ids, true);
      if (full.size() > shown) std::fwrite(full.data() + shown, 1, full.size() - shown, out);  // a held-back tail
      text = std::string(xpo::text::strip_whitespace(full));
      std::fputc('\n', out);
      std::fflush(out);
    } catch (...) {
      messages_.erase(messages_.end() - 1);  // the turn did not happen
      throw;
    }
    messages_.push_back({{"role", "assistant"}, {"content", text}});
    return text;
  }

  void save(const fs::path& path) const {
    xpo::write_json_file(path, ordered_json{{"model", args_.model_name_or_path}, {"messages", messages_}});
  }

 private:
  static torch::ScalarType dtype_of(const std::string& name) {
    xpo::XPOConfig c;
    c.dtype = name;
    return xpo::torch_dtype(c);
  }

  ChatArgs args_;
  xpo::models::CausalLM model_;
  xpo::text::Tokenizer tokenizer_;
  xpo::text::ChatTemplate chat_;
  at::Generator gen_;
  std::vector<std::int64_t> eos_;
  std::int64_t pad_ = 0;
  ordered_json messages_;
};

// The model's generation_config.json sampling defaults (as transformers' generate applies them) for every sampling
// flag the user did not give: do_sample false = greedy; temperature, top_k, top_p, min_p, max_new_tokens as set
// there. Keys the file lacks keep xpo-chat's defaults. A value of the wrong type is an error naming the file.
void apply_generation_config(ChatArgs& args, const xpo::FlagParser& flags, const fs::path& folder) {
  const auto file = folder / "generation_config.json";
  if (!fs::exists(file)) return;
  const auto g = xpo::read_json_file(file);
  if (!g.is_object()) throw xpo::FileError(file.string(), "must hold a JSON object");
  const auto number = [&](const char* key, auto& target) {
    if (flags.given(key) || !g.contains(key) || g[key].is_null()) return;
    if (!g[key].is_number()) throw xpo::FileError(file.string(), std::string(key) + " must be a number");
    target = g[key].get<std::remove_reference_t<decltype(target)>>();
  };
  number("temperature", args.temperature);
  number("top_k", args.top_k);
  number("top_p", args.top_p);
  number("max_new_tokens", args.max_new_tokens);
  if (!flags.given("min_p") && g.contains("min_p") && g["min_p"].is_number()) args.min_p = g["min_p"].get<double>();
  if (!flags.given("temperature") && g.contains("do_sample") && g["do_sample"].is_boolean() && !g["do_sample"].get<bool>())
    args.temperature = 0;  // greedy, whatever temperature the file also names
}

constexpr const char* kHelp = "commands: /clear (new conversation), /save FILE.json, /help, /exit\n";

int main_impl(int argc, char** argv) {
  ChatArgs args;
  xpo::FlagParser flags("xpo-chat", "Chat with a Hugging Face checkpoint folder (e.g. xpo-train's output_dir).\n" + std::string(kHelp));
  flags.add("model_name_or_path", args.model_name_or_path, "the model folder (config.json, model.safetensors, tokenizer.json)");
  flags.add("prompt", args.prompt, "answer this one message and exit");
  flags.add("system_prompt", args.system_prompt, "a system message that starts every conversation");
  flags.add("max_new_tokens", args.max_new_tokens, "tokens per answer at most");
  flags.add("temperature", args.temperature, "sampling temperature; 0 = greedy");
  flags.add("top_k", args.top_k, "sample among the k most likely tokens; 0 = off");
  flags.add("top_p", args.top_p, "nucleus sampling mass; 1 = off");
  flags.add("min_p", args.min_p, "drop tokens below min_p x the top probability (null = off)");
  flags.add("seed", args.seed, "sampling seed");
  flags.add("device", args.device, "torch device: cpu, cuda, cuda:N");
  flags.add("dtype", args.dtype, "float32, bfloat16, float16 or float64");
  try {
    if (!flags.parse(argc, argv, std::cout)) return 0;
  } catch (const xpo::ConfigError& e) {
    for (const auto& p : e.problems()) std::fprintf(stderr, "xpo-chat: %s\n", p.c_str());
    return 2;
  }
  (void)xpo::configure_threads();  // the BLAS and LibTorch's own kernels in one pool of all cores
  if (args.model_name_or_path.empty()) {
    std::fprintf(stderr, "xpo-chat: --model_name_or_path is required (a model folder, e.g. xpo-train's output_dir)\n");
    return 2;
  }
  if (flags.given("temperature") && args.temperature == 0) {  // greedy: sampling settings cannot take effect
    bool conflict = false;
    for (const char* sampling : {"top_k", "top_p", "min_p"})
      if (flags.given(sampling)) {
        std::fprintf(stderr, "xpo-chat: --%s has no effect with --temperature 0 (greedy decoding)\n", sampling);
        conflict = true;
      }
    if (conflict) return 2;
  }
  const fs::path folder(args.model_name_or_path);
  if (!fs::exists(folder / "config.json") && fs::exists(folder / "adapter_config.json")) {
    std::fprintf(stderr, "xpo-chat: %s holds a LoRA adapter only; open the run's output_dir (adapters merged) instead\n",
                 folder.string().c_str());
    return 2;
  }
  apply_generation_config(args, flags, folder);
  Chat chat(args);
  if (!args.prompt.empty()) {
    chat.answer(args.prompt, stdout);
    return 0;
  }
  const bool tty = ::isatty(STDIN_FILENO) != 0;
  if (tty) std::printf("xpo-chat: %s\n%s", args.model_name_or_path.c_str(), kHelp);
  std::string line;
  while (true) {
    std::printf(tty ? "\n> " : "> ");
    std::fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    const auto text = std::string(xpo::text::strip_whitespace(line));
    if (text.empty()) continue;
    if (text == "/exit" || text == "/quit") break;
    if (text == "/help") {
      std::printf("%s", kHelp);
    } else if (text == "/clear") {
      chat.clear();
      std::printf("(conversation cleared)\n");
    } else if (text.rfind("/save", 0) == 0) {
      const auto path = std::string(xpo::text::strip_whitespace(text.substr(5)));
      if (path.empty()) {
        std::printf("usage: /save FILE.json\n");
        continue;
      }
      try {
        chat.save(path);
        std::printf("(saved to %s)\n", path.c_str());
      } catch (const std::exception& e) {
        std::printf("could not save: %s\n", e.what());
      }
    } else if (text[0] == '/') {
      std::printf("unknown command %s; %s", text.c_str(), kHelp);
    } else {
      try {
        chat.answer(text, stdout);
      } catch (const xpo::Error& e) {
        std::printf("\n(%s; /clear starts a new conversation)\n", e.what());
      }
    }
  }
  if (!tty) std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  xpo::use_passive_openmp_wait(argc, argv);  // idle OpenMP threads sleep (core/threads.hpp); re-executes once
  try {
    return main_impl(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xpo-chat: %s\n", e.what());
  }
  return 1;
}
