// Trainer::train only takes callbacks: a type with none of the hooks is a compile error, not a silent no-op.
#include <xpo/training/trainer.hpp>

struct NotACallback {
  void on_epoch_begin() {}  // not one of the hooks (a typo of a real one would be caught the same way)
};

using T = xpo::Trainer<xpo::models::CausalLM, xpo::scoring::FunctionScorer>;

void run(T& trainer) {
  xpo::training::MetricsLogger logger;
#ifdef XPO_EXPECT_FAIL
  NotACallback wrong;
  trainer.train(logger, wrong);
#else
  trainer.train(logger);
#endif
}
