// examples/embedded_default.hpp — the embedded default of xpo-train: everything an XPO run needs, produced by the
// project itself, offline, in well under a minute on 2 CPU cores.
//
//  - a byte-level tokenizer (tokenizer.json in Hugging Face's format: the 256 byte symbols of GPT-2's alphabet,
//    no merges, ChatML special tokens and chat template);
//  - a prompt set: "Tell me about <topic>." style questions, conversational, in JSONL (train topics and disjoint
//    held-out eval topics);
//  - a small Qwen2-architecture policy (0.8M parameters), warm-started by a short supervised pass on answers of
//    mixed sentiment ("It is wonderful. I love it." / "It is awful. I hate it." / "It is fine, I suppose.")
//    so that it writes text, and both kinds of answer, before XPO starts;
//  - the scorer: the built-in `positivity` rule (scoring/rules.hpp), which the policy can learn to please by
//    choosing the positive answers more often: the classic "make the model positive" RLHF demo, with the
//    sentiment classifier replaced by a transparent rule.
//
// The folder it writes is an ordinary Hugging Face checkpoint: xpo-train, xpo-chat and transformers open it.
#pragma once

#include <xpo/xpo.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace xpo_examples::embedded {

using nlohmann::ordered_json;

inline constexpr std::array<std::string_view, 48> kTrainTopics = {
    "cats",      "dogs",      "rain",       "snow",      "coffee",    "tea",        "mondays",   "summer",
    "winter",    "music",     "books",      "trains",    "cities",    "forests",    "the sea",   "mountains",
    "pizza",     "soup",      "bicycles",   "cars",      "gardens",   "birds",      "chess",     "football",
    "painting",  "cooking",   "homework",   "meetings",  "airports",  "museums",    "jazz",      "poetry",
    "bread",     "cheese",    "storms",     "clouds",    "rivers",    "islands",    "robots",    "computers",
    "libraries", "markets",   "bridges",    "castles",   "owls",      "horses",     "apples",    "lemons"};
inline constexpr std::array<std::string_view, 16> kEvalTopics = {
    "sunsets", "puzzles", "trees",  "beaches", "violins", "candles", "kites",  "tigers",
    "deserts", "bakeries", "rockets", "lakes", "pianos",  "parks",   "oceans", "theatres"};

inline constexpr std::array<std::string_view, 4> kQuestions = {"Tell me about {}.", "What do you think of {}?",
                                                              "Describe {}.", "How do you feel about {}?"};

// Answers, by question form (statement questions 0, 2; opinion questions 1, 3): positive, negative, neutral. The
// policy need not copy the topic, so a small model learns them in seconds; what XPO must learn is which to pick.
inline constexpr std::array<std::string_view, 8> kStatementAnswers = {
    "It is wonderful. I love it.", "It is great fun and I like it.", "It is lovely and bright.",
    "It is awful. I hate it.",     "It is boring and bad.",          "It is dull and gloomy.",
    "It is fine, I suppose.",      "There is not much to say."};
inline constexpr std::array<std::string_view, 8> kOpinionAnswers = {
    "I love it. It is the best.", "I think it is great.",    "It makes me happy.",
    "I hate it. It is the worst.", "I think it is terrible.", "It makes me sad.",
    "I have no strong opinion.",   "I do not think about it much."};

inline constexpr std::string_view kChatTemplate =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// The question with its "{}" replaced by the topic.
inline std::string fill(std::string_view pattern, std::string_view topic) {
  std::string out(pattern);
  out.replace(out.find("{}"), 2, topic);
  return out;
}

// {"prompt": [{"role": "user", "content": question}], "topic": topic} for every topic and question form.
inline xpo::io::PromptRows prompt_rows(const auto& topics) {
  xpo::io::PromptRows rows;
  for (const auto topic : topics)
    for (const auto question : kQuestions)
      rows.push_back({{"prompt", ordered_json::array({{{"role", "user"}, {"content", fill(question, topic)}}})},
                      {"topic", std::string(topic)}});
  return rows;
}

inline void write_jsonl(const std::filesystem::path& path, const xpo::io::PromptRows& rows) {
  std::filesystem::create_directories(path.parent_path());
  std::string text;
  for (const auto& r : rows) text += r.dump() + "\n";
  xpo::write_text_file_atomic(path, text);
}

// tokenizer.json: byte-level BPE without merges (ids 0..255 are the bytes), then the three ChatML specials.
inline ordered_json tokenizer_json() {
  return xpo::text::byte_level_tokenizer_json({"<|endoftext|>", "<|im_start|>", "<|im_end|>"});
}

inline ordered_json model_config_json() {
  return {{"architectures", {"Qwen2ForCausalLM"}}, {"model_type", "qwen2"}, {"vocab_size", 272}, {"hidden_size", 128},
          {"intermediate_size", 352}, {"num_hidden_layers", 4}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
          {"max_position_embeddings", 256}, {"rope_theta", 10000.0}, {"rms_norm_eps", 1e-6}, {"tie_word_embeddings", true},
          {"hidden_act", "silu"}, {"bos_token_id", nullptr}, {"eos_token_id", 258}, {"pad_token_id", 256},
          {"torch_dtype", "float32"}};
}

inline std::int64_t parameter_count(torch::nn::Module& m) {
  std::int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

struct BuildOptions {
  std::int64_t sft_steps = 400;
  std::int64_t batch_size = 16;
  double learning_rate = 3e-3;
  std::uint64_t seed = 0;
};

// Writes the tokenizer files, trains the warm start and saves the model: `folder` becomes a complete Hugging Face
// checkpoint. Deterministic for a given seed on one machine.
inline void build(const std::filesystem::path& folder, const BuildOptions& options = {}, std::FILE* log = stderr) {
  const auto start = std::chrono::steady_clock::now();
  const auto tmp = folder.parent_path() / (folder.filename().string() + ".partial");
  std::filesystem::remove_all(tmp);
  std::filesystem::create_directories(tmp);
  xpo::write_text_file_atomic(tmp / "tokenizer.json", tokenizer_json().dump(1));
  xpo::write_json_file(tmp / "tokenizer_config.json",
                       ordered_json{{"bos_token", nullptr}, {"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"},
                                    {"unk_token", nullptr}, {"model_max_length", 256}, {"tokenizer_class", "PreTrainedTokenizerFast"},
                                    {"clean_up_tokenization_spaces", false}, {"chat_template", kChatTemplate}});
  xpo::write_json_file(tmp / "generation_config.json", ordered_json{{"eos_token_id", 258}, {"pad_token_id", 256}});
  const auto tokenizer = xpo::text::Tokenizer::from_pretrained(tmp);
  const xpo::text::ChatTemplate chat{std::string(kChatTemplate)};
  xpo::text::ChatOptions gen_prompt;
  gen_prompt.add_generation_prompt = true;

  // Supervised examples: chat-formatted question + one answer + <|im_end|>; loss on the answer only.
  struct Example {
    std::vector<std::int64_t> ids;
    std::size_t answer_start;
  };
  std::vector<Example> examples;
  for (const auto topic : kTrainTopics) {
    for (std::size_t q = 0; q < kQuestions.size(); ++q) {
      const auto question = kQuestions[q];
      const auto prompt = chat.render(ordered_json::array({{{"role", "user"}, {"content", fill(question, topic)}}}),
                                      tokenizer.special_tokens(), gen_prompt);
      const auto prompt_ids = tokenizer.encode(prompt, false);
      for (const auto answer : q % 2 == 0 ? kStatementAnswers : kOpinionAnswers) {
        auto ids = prompt_ids;
        const auto answer_ids = tokenizer.encode(std::string(answer) + "<|im_end|>", false);
        ids.insert(ids.end(), answer_ids.begin(), answer_ids.end());
        examples.push_back({std::move(ids), prompt_ids.size()});
      }
    }
  }

  const auto config = xpo::io::ModelConfig::from_json(model_config_json());
  torch::manual_seed(options.seed);
  xpo::models::CausalLM model(config);
  xpo::models::init_weights(*model);
  model->train();
  torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(options.learning_rate).weight_decay(0.0));
  std::mt19937_64 rng(options.seed);
  std::uniform_int_distribution<std::size_t> pick(0, examples.size() - 1);
  std::fprintf(log, "embedded default: training the warm-start policy (%lld parameters) on %zu answers, %lld steps\n",
               static_cast<long long>(parameter_count(*model)), examples.size(),
               static_cast<long long>(options.sft_steps));
  double running = 0;
  for (std::int64_t step = 0; step < options.sft_steps; ++step) {
    std::vector<const Example*> batch;
    std::size_t width = 0;
    for (std::int64_t i = 0; i < options.batch_size; ++i) {
      batch.push_back(&examples[pick(rng)]);
      width = std::max(width, batch.back()->ids.size());
    }
    auto ids = torch::full({options.batch_size, static_cast<std::int64_t>(width)}, 256, torch::kLong);
    auto labels = torch::full_like(ids, -100);
    auto mask = torch::zeros_like(ids);
    for (std::int64_t b = 0; b < options.batch_size; ++b) {
      const auto& e = *batch[static_cast<std::size_t>(b)];
      const auto n = static_cast<std::int64_t>(e.ids.size());
      const auto row = torch::tensor(e.ids, torch::kLong);
      ids[b].narrow(0, 0, n).copy_(row);
      mask[b].narrow(0, 0, n).fill_(1);
      const auto a = static_cast<std::int64_t>(e.answer_start);
      labels[b].narrow(0, a - 1, n - a).copy_(row.narrow(0, a, n - a));  // position t predicts token t + 1
    }
    const auto positions = xpo::position_ids_from_mask(mask);
    const auto logits = model->forward(ids, mask, positions);
    const auto loss = torch::nn::functional::cross_entropy(
        logits.reshape({-1, logits.size(-1)}), labels.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
    optimizer.zero_grad();
    loss.backward();
    torch::nn::utils::clip_grad_norm_(model->parameters(), 1.0);
    const double progress = static_cast<double>(step) / static_cast<double>(options.sft_steps);
    for (auto& group : optimizer.param_groups()) group.options().set_lr(options.learning_rate * 0.5 * (1 + std::cos(M_PI * progress)));
    optimizer.step();
    running = step == 0 ? loss.item<double>() : 0.95 * running + 0.05 * loss.item<double>();
    if ((step + 1) % 50 == 0 || step + 1 == options.sft_steps)
      std::fprintf(log, "  warm start step %lld/%lld: loss %.3f\n", static_cast<long long>(step + 1),
                   static_cast<long long>(options.sft_steps), running);
  }
  model->eval();
  xpo::models::save_pretrained(model, tmp);
  std::filesystem::remove_all(folder);
  std::filesystem::rename(tmp, folder);
  std::fprintf(log, "embedded default: wrote %s (%.0f s)\n", folder.string().c_str(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
}

}  // namespace xpo_examples::embedded
