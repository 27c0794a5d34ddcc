// xpo/core/flags.hpp — TRL-style command-line flags. Every XPOConfig field is a flag under its own name (from
// visit_fields, so a new field cannot be forgotten), programs add their own, and `--config file.json` loads a
// config file first so that flags given next to it override its values.
//   --name value | --name=value     booleans also as a bare --name; optional values accept null/none;
//                                   list values (alpha, beta) take one or more values, space- or comma-separated
// Every problem (unknown flag — with the nearest known one suggested —, bad value, then the config's own
// validation) is reported at once in one xpo::ConfigError, before any model is loaded.
#pragma once

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <optional>
#include <ostream>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "xpo/core/config.hpp"
#include "xpo/core/errors.hpp"

namespace xpo {

namespace detail {

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};
template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};

// One scalar from text; "" when fine, else what is wrong.
template <class T>
std::string parse_scalar(const std::string& text, T& out) {
  if constexpr (std::is_same_v<T, std::string>) {
    out = text;
    return "";
  } else if constexpr (std::is_same_v<T, bool>) {
    if (text == "true" || text == "True" || text == "1" || text == "yes") out = true;
    else if (text == "false" || text == "False" || text == "0" || text == "no") out = false;
    else return "expected true or false";
    return "";
  } else if constexpr (std::is_integral_v<T>) {
    T v{};
    const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
    if (r.ec != std::errc() || r.ptr != text.data() + text.size()) return "expected an integer";
    out = v;
    return "";
  } else {
    static_assert(std::is_floating_point_v<T>);
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    if (text.empty() || end != text.c_str() + text.size()) return "expected a number";
    out = static_cast<T>(v);
    return "";
  }
}

template <class T>
std::string value_text(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) {
    return v.empty() ? "\"\"" : v;
  } else if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else if constexpr (is_optional<T>::value) {
    return v ? value_text(*v) : "null";
  } else if constexpr (is_vector<T>::value) {
    std::string out;
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (i > 0) out.push_back(',');
      out.append(value_text(v[i]));
    }
    return out;
  } else {
    std::ostringstream s;
    s << v;
    return s.str();
  }
}

}  // namespace detail

class FlagParser {
 public:
  FlagParser(std::string program, std::string description)
      : program_(std::move(program)), description_(std::move(description)) {}

  // A flag bound to `target` (string, bool, integer, floating, std::optional of those, or std::vector of those).
  template <class T>
  void add(const std::string& name, T& target, const std::string& help) {
    Flag f;
    f.name = name;
    f.help = help;
    f.default_text = detail::value_text(target);
    f.is_bool = std::is_same_v<T, bool>;
    f.is_list = detail::is_vector<T>::value;
    f.set = [&target](const std::vector<std::string>& values) -> std::string {
      if constexpr (detail::is_vector<T>::value) {
        T out;
        for (const auto& v : values) {
          typename T::value_type x{};
          if (auto problem = detail::parse_scalar(v, x); !problem.empty()) return "\"" + v + "\": " + problem;
          out.push_back(x);
        }
        if (out.empty()) return "expected at least one value";
        target = std::move(out);
        return "";
      } else if constexpr (detail::is_optional<T>::value) {
        if (values.at(0) == "null" || values.at(0) == "none" || values.at(0) == "None") {
          target.reset();
          return "";
        }
        typename T::value_type x{};
        if (auto problem = detail::parse_scalar(values.at(0), x); !problem.empty()) return "\"" + values.at(0) + "\": " + problem + " (or null)";
        target = x;
        return "";
      } else {
        if (auto problem = detail::parse_scalar(values.at(0), target); !problem.empty()) return "\"" + values.at(0) + "\": " + problem;
        return "";
      }
    };
    order_.push_back(name);
    flags_[name] = std::move(f);
  }

  // Every XPOConfig field as a flag, and --config FILE (loaded before the other flags are applied).
  void add_config(XPOConfig& config) {
    config_ = &config;
    visit_fields(config, [&](const char* name, auto& member, const char* help) {
      add(name, member, help);
      config_fields_.insert(name);
    });
    config_flag_.name = "config";
    config_flag_.help = "a JSON config file (TRL field names); flags given with it override its values";
    config_flag_.default_text = "none";
  }

  // Parses argv[1..]; returns false when --help was asked (the help text is written to `help_out`). Throws one
  // ConfigError listing every problem, including the config's validation.
  bool parse(int argc, const char* const* argv, std::ostream& help_out) {
    std::vector<std::string> problems;
    std::vector<std::pair<std::string, std::vector<std::string>>> given;
    std::optional<std::string> config_file;
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        help_out << help();
        return false;
      }
      if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
        problems.push_back("unexpected argument \"" + arg + "\" (flags look like --name value)");
        continue;
      }
      std::string name = arg.substr(2);
      std::vector<std::string> values;
      if (const auto eq = name.find('='); eq != std::string::npos) {
        values.push_back(name.substr(eq + 1));
        name = name.substr(0, eq);
      }
      std::replace(name.begin(), name.end(), '-', '_');
      if (name == config_flag_.name && config_ != nullptr) {
        if (values.empty() && i + 1 < argc) values.push_back(argv[++i]);
        if (values.empty()) problems.push_back("--config: needs a file");
        else config_file = values.front();
        continue;
      }
      const auto it = flags_.find(name);
      if (it == flags_.end()) {
        problems.push_back("unknown flag --" + name + suggestion(name));
        while (i + 1 < argc && std::string_view(argv[i + 1]).rfind("--", 0) != 0) ++i;  // skip its values
        continue;
      }
      const Flag& f = it->second;
      if (values.empty()) {
        while (i + 1 < argc && !is_flag(argv[i + 1])) {
          values.push_back(argv[++i]);
          if (!f.is_list) break;
        }
      }
      if (values.empty()) {
        if (f.is_bool) values.push_back("true");
        else {
          problems.push_back("--" + name + ": needs a value");
          continue;
        }
      }
      if (f.is_list) {  // "1e-5,1e-6" and "1e-5 1e-6" alike
        std::vector<std::string> split;
        for (const auto& v : values) {
          std::size_t start = 0;
          for (std::size_t comma; (comma = v.find(',', start)) != std::string::npos; start = comma + 1) split.push_back(v.substr(start, comma - start));
          split.push_back(v.substr(start));
        }
        values = std::move(split);
      }
      given.emplace_back(name, std::move(values));
    }
    if (config_file && config_ != nullptr) {
      try {
        auto j = read_json_file(*config_file, std::uintmax_t{1} << 24);
        // The program's own flags may be in the file too (TRL's config files hold script arguments as well);
        // they are applied first, so the command line still overrides them.
        std::vector<std::pair<std::string, std::vector<std::string>>> from_file;
        if (j.is_object()) {
          for (auto it = j.begin(); it != j.end();) {
            if (flags_.contains(it.key()) && !config_fields_.contains(it.key())) {
              if (it->is_null()) {  // null keeps the flag's default
                it = j.erase(it);
                continue;
              }
              std::vector<std::string> values;
              const auto text = [](const nlohmann::json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); };
              if (it->is_array())
                for (const auto& v : *it) values.push_back(text(v));
              else values.push_back(text(*it));
              from_file.emplace_back(it.key(), std::move(values));
              it = j.erase(it);
            } else {
              ++it;
            }
          }
        }
        given.insert(given.begin(), from_file.begin(), from_file.end());
        if (j.is_object())
          for (auto it = j.begin(); it != j.end(); ++it) given_.insert(it.key());
        config_->update_from_json(j, *config_file);
      } catch (const ConfigError& e) {
        problems.insert(problems.end(), e.problems().begin(), e.problems().end());
      } catch (const Error& e) {
        problems.push_back(e.what());
      }
    }
    for (const auto& [name, values] : given) {
      given_.insert(name);
      if (auto problem = flags_.at(name).set(values); !problem.empty()) problems.push_back("--" + name + " " + problem);
    }
    if (problems.empty() && config_ != nullptr) {
      for (auto& p : config_->problems()) problems.push_back("--" + p);
    }
    if (!problems.empty()) throw ConfigError(problems);
    return true;
  }

  // Whether the user set flag `name` (on the command line or in the --config file) in the last parse(), as
  // opposed to leaving its default: what a check for conflicting settings asks.
  [[nodiscard]] bool given(const std::string& name) const { return given_.contains(name); }

  [[nodiscard]] std::string help() const {
    std::ostringstream s;
    s << "usage: " << program_ << " [--flag value ...]\n" << description_ << "\n\nflags (default in brackets):\n";
    const auto line = [&](const Flag& f) {
      std::string head = "  --" + f.name + (f.is_bool ? "" : f.is_list ? " V[,V...]" : " V");
      if (head.size() < 36) head.resize(36, ' ');
      s << head << f.help << " [" << f.default_text << "]\n";
    };
    if (config_ != nullptr) line(config_flag_);
    for (const auto& name : order_) line(flags_.at(name));
    return s.str();
  }

 private:
  struct Flag {
    std::string name, help, default_text;
    bool is_bool = false, is_list = false;
    std::function<std::string(const std::vector<std::string>&)> set;
  };

  static bool is_flag(std::string_view a) {
    if (a.rfind("--", 0) != 0) return false;
    return a.size() > 2 && !std::isdigit(static_cast<unsigned char>(a[2])) && a[2] != '.';
  }

  std::string suggestion(const std::string& name) const {
    std::string best;
    std::size_t best_distance = std::string::npos;
    for (const auto& n : order_) {
      const auto d = detail::edit_distance(name, n);
      if (d < best_distance) {
        best_distance = d;
        best = n;
      }
    }
    if (!best.empty() && best_distance <= std::max<std::size_t>(2, name.size() / 3)) return " (did you mean --" + best + "?)";
    return "";
  }

  std::string program_, description_;
  std::vector<std::string> order_;
  std::map<std::string, Flag> flags_;
  XPOConfig* config_ = nullptr;
  std::set<std::string> config_fields_;
  std::set<std::string> given_;
  Flag config_flag_;
};

}  // namespace xpo
