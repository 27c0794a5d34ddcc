// A judge that takes one completion per prompt instead of a pair is neither scorer kind.
#include "slots.hpp"

struct GoodJudge {
  std::vector<int> judge(const std::vector<std::string>& prompts, const std::vector<xpo::CompletionPair>&) {
    return std::vector<int>(prompts.size(), 0);
  }
};
struct JudgeOfSingleCompletions {
  std::vector<int> judge(const std::vector<std::string>& prompts, const std::vector<std::string>&) {
    return std::vector<int>(prompts.size(), 0);
  }
};

#ifdef XPO_EXPECT_FAIL
template struct xpo_compile_fail::ScorerSlot<JudgeOfSingleCompletions>;
#else
template struct xpo_compile_fail::ScorerSlot<GoodJudge>;
#endif
