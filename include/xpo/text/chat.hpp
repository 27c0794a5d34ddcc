// xpo/text/chat.hpp — chat templates and prompt preparation, as transformers' apply_chat_template and TRL's
// maybe_apply_chat_template + tokenize_row do them.
//
//   ChatTemplate::render(messages, special tokens, options)  == tokenizer.apply_chat_template(messages, tokenize=False,
//                                                               add_generation_prompt=..., continue_final_message=...,
//                                                               **template_kwargs)
//   prepare_prompt(tokenizer, template, prompt)              == what TRL's online trainers feed the policy: a standard
//                                                               prompt as is; a conversation rendered with the generation
//                                                               prompt (last role user) or continuing the final message
//                                                               (last role assistant); tokenised without special tokens,
//                                                               a BOS prepended when the tokenizer has one.
#pragma once

#include <algorithm>
#include <ctime>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "xpo/core/errors.hpp"
#include "xpo/text/jinja/template.hpp"
#include "xpo/text/tokenizer.hpp"

namespace xpo::text {

// TRL's SIMPLE_CHAT_TEMPLATE, for base models whose tokenizer has no chat template.
inline constexpr const char* kSimpleChatTemplate =
    "{% for message in messages %}{{message['role'].capitalize() + ': ' + message['content'] + '\\n\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

struct ChatOptions {
  bool add_generation_prompt = false;
  bool continue_final_message = false;  // cut the text after the last message's content
  nlohmann::ordered_json template_kwargs = nlohmann::ordered_json::object();  // e.g. {"enable_thinking": false}
  // The template's `tools` and `documents` (transformers' apply_chat_template(tools=..., documents=...)): a JSON list
  // of tool schemas / documents, or null (the template sees None). A key of template_kwargs of the same name wins.
  nlohmann::ordered_json tools = nullptr;
  nlohmann::ordered_json documents = nullptr;
  // The local time strftime_now() returns; unset: the system clock. For reproducible renders.
  std::optional<std::tm> now;
};

// Checks that `messages` is a non-empty list of objects; `where` names the source. As in transformers, a message
// may have any shape (no required "role" or "content"; content may be a string, parts, a mapping, a number or null):
// the template decides what it accepts, and raises if it does not.
template <typename Json>
void validate_messages(const Json& messages, const std::string& where) {
  if (!messages.is_array() || messages.empty()) throw ConfigError(where + ": a conversation must be a non-empty list of messages");
  for (std::size_t i = 0; i < messages.size(); ++i) {
    if (!messages[i].is_object()) throw ConfigError(where + ": message " + std::to_string(i) + " is not an object");
  }
}

class ChatTemplate {
 public:
  explicit ChatTemplate(std::string source, jinja::Limits limits = {})
      : template_(std::move(source), jinja::Options{}, limits) {}

  // The tokenizer's own template; an error naming the fix when it has none. Its size was bounded when the
  // tokenizer was loaded (TokenizerLimits::max_chat_template_bytes), so it is not bounded twice here.
  static ChatTemplate of(const Tokenizer& tokenizer, jinja::Limits limits = {}) {
    if (!tokenizer.chat_template()) {
      throw ConfigError("the tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja); set one "
                        "with Tokenizer::set_chat_template, e.g. xpo::text::kSimpleChatTemplate");
    }
    limits.max_template_bytes = std::max(limits.max_template_bytes, tokenizer.chat_template()->size());
    return ChatTemplate(*tokenizer.chat_template(), limits);
  }

  // Renders `messages` (a JSON list of message objects) with transformers' variables: messages, tools, documents
  // (None unless given), add_generation_prompt, the special tokens that are set, then template_kwargs.
  // Errors: ConfigError for a malformed conversation or options; jinja::TemplateError (with the template's line and
  // column) when the template raises or fails; ConfigError when continue_final_message cannot find the message.
  template <typename Json>
  [[nodiscard]] std::string render(const Json& messages, const SpecialTokens& special, const ChatOptions& options = {}) const {
    validate_messages(messages, "chat");
    if (options.add_generation_prompt && options.continue_final_message) {
      throw ConfigError("chat: add_generation_prompt and continue_final_message cannot both be set");
    }
    jinja::Dict vars;
    vars.set("messages", jinja::from_json(messages));
    const auto list_or_none = [](const nlohmann::ordered_json& j, const char* name) -> jinja::Value {
      if (j.is_null()) return jinja::None{};
      if (!j.is_array()) throw ConfigError(std::string("chat: ") + name + " must be a JSON list (or null)");
      return jinja::from_json(j);
    };
    vars.set("tools", list_or_none(options.tools, "tools"));
    vars.set("documents", list_or_none(options.documents, "documents"));
    vars.set("add_generation_prompt", options.add_generation_prompt);
    const auto set_token = [&](const char* name, const std::optional<std::string>& token) {
      if (token) vars.set(name, *token);
    };
    set_token("bos_token", special.bos_token);
    set_token("eos_token", special.eos_token);
    set_token("unk_token", special.unk_token);
    set_token("pad_token", special.pad_token);
    if (!special.additional.empty()) {
      jinja::List extra;
      for (const auto& s : special.additional) extra.emplace_back(s);
      vars.set("additional_special_tokens", jinja::Value::make_list(std::move(extra)));
    }
    if (!options.template_kwargs.is_null()) {
      if (!options.template_kwargs.is_object()) throw ConfigError("chat: template_kwargs must be a JSON object");
      for (auto it = options.template_kwargs.begin(); it != options.template_kwargs.end(); ++it) {
        vars.set(it.key(), jinja::from_json(it.value()));
      }
    }
    std::string rendered = template_.render(vars, options.now);
    if (options.continue_final_message) rendered = cut_after_final_message(rendered, messages.back());
    return rendered;
  }

  [[nodiscard]] const std::string& source() const noexcept { return template_.source(); }

 private:
  // transformers: keep the text up to the end of the final message's content (its trailing spaces only if the
  // template kept them), so that generation continues that message. The content is a string, or parts of which the
  // last with a "text" counts; anything else is an error, as in transformers.
  template <typename Json>
  static std::string cut_after_final_message(const std::string& rendered, const Json& final_message) {
    std::string content;
    const auto found = final_message.find("content");
    if (found != final_message.end() && found->is_string()) {
      content = found->template get<std::string>();
    } else if (found != final_message.end() && found->is_array()) {
      bool has_text = false;
      for (auto it = found->rbegin(); it != found->rend() && !has_text; ++it) {
        if (it->is_object() && it->contains("text") && (*it)["text"].is_string()) {
          content = (*it)["text"].template get<std::string>();
          has_text = true;
        }
      }
      if (!has_text) throw ConfigError("continue_final_message: the final message has no text part to continue");
    } else {
      throw ConfigError("continue_final_message: the final message's content is not text (a string or parts)");
    }
    const std::string stripped = jinja::detail::py_strip(content, nullptr, true, true);
    const std::string lstripped = jinja::detail::py_strip(content, nullptr, true, false);
    const auto at = rendered.rfind(stripped);
    if (at == std::string::npos) {
      throw ConfigError("continue_final_message: the final message does not appear in the rendered chat (the "
                        "template drops or rewrites it)");
    }
    if (rendered.compare(at, lstripped.size(), content) == 0) {  // the template kept the message's trailing spaces
      return rendered.substr(0, at + lstripped.size());
    }
    return rendered.substr(0, at + stripped.size());
  }

  jinja::Template template_;
};

// The template variables of one dataset row, as TRL/transformers pass them: the row's "chat_template_kwargs"
// object, plus its "tools" and "documents" columns (lists, or null) under those names unless the kwargs already
// name them. `defaults` (e.g. from --config) come first and the row's own values win. Errors: ConfigError naming
// `where` when a column has the wrong type.
template <typename Json>
nlohmann::ordered_json row_template_kwargs(const Json& row, const std::string& where,
                                           const nlohmann::ordered_json& defaults = nlohmann::ordered_json::object()) {
  nlohmann::ordered_json kwargs = defaults.is_object() ? defaults : nlohmann::ordered_json::object();
  if (!row.is_object()) return kwargs;
  for (const char* column : {"tools", "documents"}) {
    const auto found = row.find(column);
    if (found == row.end() || found->is_null()) continue;
    if (!found->is_array()) throw ConfigError(where + ": \"" + column + "\" must be a list");
    kwargs[column] = *found;
  }
  const auto extra = row.find("chat_template_kwargs");
  if (extra != row.end() && !extra->is_null()) {
    if (!extra->is_object()) throw ConfigError(where + ": \"chat_template_kwargs\" must be an object");
    for (auto it = extra->begin(); it != extra->end(); ++it) kwargs[it.key()] = it.value();
  }
  return kwargs;
}

// A prompt ready for generation: the text the policy sees and its token ids.
struct PreparedPrompt {
  std::string text;
  std::vector<TokenId> ids;
};

// A dataset prompt (a JSON string, or a list of messages) -> text and ids, as TRL prepares it. A conversation
// needs a chat template: `chat` (else the tokenizer's). `where` names the source in errors (e.g. "prompts.jsonl:12").
template <typename Json>
PreparedPrompt prepare_prompt(const Tokenizer& tokenizer, const Json& prompt, const ChatTemplate* chat = nullptr,
                              const nlohmann::ordered_json& template_kwargs = nlohmann::ordered_json::object(),
                              const std::string& where = "prompt") {
  PreparedPrompt out;
  if (prompt.is_string()) {
    out.text = prompt.template get<std::string>();
  } else if (prompt.is_array()) {
    validate_messages(prompt, where);
    const auto last_role = prompt.back().find("role");
    if (last_role == prompt.back().end() || !last_role->is_string()) {
      throw ConfigError(where + ": the last message of a prompt needs a string \"role\" (user or assistant)");
    }
    const std::string role = last_role->template get<std::string>();
    ChatOptions options;
    options.template_kwargs = template_kwargs;
    if (role == "user") {
      options.add_generation_prompt = true;
    } else if (role == "assistant") {
      options.continue_final_message = true;
    } else {
      throw ConfigError(where + ": the last message of a prompt must have role \"user\" (answer it) or \"assistant\" "
                        "(continue it), not \"" + role + "\"");
    }
    std::optional<ChatTemplate> own;
    try {
      if (chat == nullptr) chat = &own.emplace(ChatTemplate::of(tokenizer));
      out.text = chat->render(prompt, tokenizer.special_tokens(), options);
    } catch (const Error& e) {  // no template, or the template failed: name the prompt
      throw ConfigError(where + ": " + e.what());
    }
  } else {
    throw ConfigError(where + ": \"prompt\" must be a string or a list of {\"role\", \"content\"} messages");
  }
  out.ids = tokenizer.encode(out.text, /*add_special_tokens=*/false);
  const auto& bos = tokenizer.special_tokens().bos_id;
  if (bos && (out.ids.empty() || out.ids.front() != *bos)) out.ids.insert(out.ids.begin(), *bos);
  return out;
}

}  // namespace xpo::text
