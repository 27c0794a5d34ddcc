// xpo/core/threads.hpp: the thread count each source gives, malformed OMP_NUM_THREADS, and the BLAS it reports
// against the library file the process actually mapped (/proc/self/maps, independent of OpenBLAS's own answer).
#include <gtest/gtest.h>

#include <xpo/core/threads.hpp>

#include <fstream>

#include <sched.h>

namespace {

// Restores ATen's thread count and OMP_NUM_THREADS after each test: the test program shares one process.
class ConfigureThreads : public ::testing::Test {
 protected:
  void SetUp() override {
    threads_ = at::get_num_threads();
    if (const char* e = std::getenv("OMP_NUM_THREADS")) omp_ = e;
    ::unsetenv("OMP_NUM_THREADS");
  }
  void TearDown() override {
    torch::set_num_threads(threads_);
    if (omp_) ::setenv("OMP_NUM_THREADS", omp_->c_str(), 1); else ::unsetenv("OMP_NUM_THREADS");
  }
  int threads_ = 1;
  std::optional<std::string> omp_;
};

int affinity_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  return CPU_COUNT(&set);
}

// Which OpenBLAS build the dynamic loader mapped: Debian installs each in its own folder.
std::string mapped_openblas() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    if (line.find("openblas-openmp/") != std::string::npos) return "OpenBLAS (OpenMP)";
    if (line.find("openblas-pthread/") != std::string::npos) return "OpenBLAS (pthreads)";
    if (line.find("openblas-serial/") != std::string::npos) return "OpenBLAS (serial)";
  }
  return "other BLAS";
}

TEST_F(ConfigureThreads, AnExplicitCountIsSetAsAsked) {
  const auto s = xpo::configure_threads(1);
  EXPECT_EQ(s.threads, 1);
  EXPECT_EQ(s.source, "argument");
  EXPECT_EQ(at::get_num_threads(), 1);
  EXPECT_THROW(xpo::configure_threads(0), xpo::ConfigError);
}

TEST_F(ConfigureThreads, OmpNumThreadsWinsAndAMalformedValueNamesTheVariable) {
  ::setenv("OMP_NUM_THREADS", "1", 1);
  const auto s = xpo::configure_threads();
  EXPECT_EQ(s.source, "OMP_NUM_THREADS");
  EXPECT_EQ(s.threads, 1);
  for (const char* bad : {"two", "0", "-3", "2x"}) {
    ::setenv("OMP_NUM_THREADS", bad, 1);
    try {
      xpo::configure_threads();
      ADD_FAILURE() << "OMP_NUM_THREADS=" << bad << " was accepted";
    } catch (const xpo::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("OMP_NUM_THREADS"), std::string::npos) << e.what();
    }
  }
}

TEST_F(ConfigureThreads, TheDefaultSharesTheCoresAmongLocalProcessesAndFollowsTheBlasBuild) {
  const int cores = affinity_cores();
  const auto s = xpo::configure_threads();
  EXPECT_EQ(s.cores, cores);
  EXPECT_EQ(s.blas, mapped_openblas());
  EXPECT_EQ(at::get_num_threads(), s.threads);
  if (s.blas == "OpenBLAS (pthreads)") {  // two pools cannot share: ATen stays at one thread, and says why
    EXPECT_EQ(s.threads, 1);
    EXPECT_FALSE(s.shared_pool);
    EXPECT_NE(s.note.find("libopenblas0-openmp"), std::string::npos);
  } else {
    EXPECT_EQ(s.threads, cores);
    EXPECT_EQ(s.shared_pool, s.blas == "OpenBLAS (OpenMP)");
    const auto shared = xpo::configure_threads(std::nullopt, cores * 2);  // more ranks than cores: still one each
    EXPECT_EQ(shared.threads, 1);
  }
  EXPECT_NE(s.describe().find(s.blas), std::string::npos);
}

TEST_F(ConfigureThreads, PassiveWaitLeavesAUsersPolicyAloneAndIsLogged) {
  const char* before = std::getenv("OMP_WAIT_POLICY");
  const std::optional<std::string> saved = before ? std::optional<std::string>(before) : std::nullopt;
  ::setenv("OMP_WAIT_POLICY", "active", 1);
  char name[] = "xpo_foundation_tests";
  char* argv[] = {name, nullptr};
  xpo::use_passive_openmp_wait(1, argv);  // set by the user: returns without re-executing
  EXPECT_STREQ(std::getenv("OMP_WAIT_POLICY"), "active");
  EXPECT_NE(xpo::configure_threads(1).describe().find("OMP_WAIT_POLICY=active"), std::string::npos);
  if (saved) ::setenv("OMP_WAIT_POLICY", saved->c_str(), 1); else ::unsetenv("OMP_WAIT_POLICY");
}

}  // namespace
