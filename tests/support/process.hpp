// Test support: run a program as a child process (fork + exec), with optional stdin text, capturing stdout and
// stderr through files (no pipe deadlocks) and returning its exit status.
#pragma once

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

namespace xpo::test {

struct ProcessResult {
  int status = -1;  // exit code, or 128 + signal number when killed by a signal
  std::string out, err;
};

namespace detail {
inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
}  // namespace detail

// Starts argv[0] with argv; `scratch` holds the captured streams. `while_running(pid)` (optional) is called once
// the child runs, e.g. to send it a signal; the call then waits for the child to end. `in_child` (optional) runs
// in the child between fork and exec, e.g. to set a resource limit; it must only make async-signal-safe calls.
inline ProcessResult run_process(const std::vector<std::string>& argv, const std::filesystem::path& scratch,
                                 const std::string& stdin_text = "", const std::function<void(pid_t)>& while_running = {},
                                 const std::function<void()>& in_child = {}) {
  static std::atomic<int> counter{0};  // callers may run processes from several threads
  const auto base = scratch / ("proc-" + std::to_string(counter++));
  const auto in_path = base.string() + ".in", out_path = base.string() + ".out", err_path = base.string() + ".err";
  std::ofstream(in_path, std::ios::binary) << stdin_text;
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    const int in = ::open(in_path.c_str(), O_RDONLY);
    const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0 || err < 0) ::_exit(126);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    if (in_child) in_child();
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  if (while_running) while_running(pid);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ProcessResult r;
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = detail::slurp(out_path);
  r.err = detail::slurp(err_path);
  return r;
}

// Polls `ready` every 50 ms for up to `timeout`; true when it became true.
inline bool wait_until(const std::function<bool()>& ready, std::chrono::seconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return ready();
}

}  // namespace xpo::test
