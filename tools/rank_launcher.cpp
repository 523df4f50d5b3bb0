#include "rank_launcher.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "dsattn/core/error.h"

namespace dsattn::tools {

namespace {

std::vector<std::string> own_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  if (!in) fail<Error>("cannot read /proc/self/cmdline to start the ranks");
  std::vector<std::string> args;
  std::string arg;
  while (std::getline(in, arg, '\0')) args.push_back(arg);
  if (args.empty()) fail<Error>("/proc/self/cmdline is empty");
  return args;
}

std::string describe(int status) {
  if (WIFEXITED(status)) return fmt::format("exit status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {}", WTERMSIG(status));
  return fmt::format("wait status {}", status);
}

// SIGTERM to every rank still running, SIGKILL to those still there after a grace period, and
// reaps them all.
void stop_ranks(std::vector<pid_t>& running) {
  for (pid_t pid : running) kill(pid, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!running.empty()) {
    for (auto it = running.begin(); it != running.end();) {
      int status = 0;
      it = waitpid(*it, &status, WNOHANG) == *it ? running.erase(it) : it + 1;
    }
    if (running.empty()) break;
    if (std::chrono::steady_clock::now() > deadline) {
      for (pid_t pid : running) kill(pid, SIGKILL);
      for (pid_t pid : running) waitpid(pid, nullptr, 0);
      running.clear();
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

PrivateDir::PrivateDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/dsattn-tp-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    fail<Error>("cannot create a private directory from {}: {}", pattern, std::strerror(errno));
  }
  path_ = pattern;
}

PrivateDir::~PrivateDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

void launch_ranks(int world_size, const std::string& rendezvous) {
  const std::vector<std::string> base = own_command_line();
  std::vector<pid_t> running;
  std::vector<pid_t> pid_of_rank;
  std::fflush(stdout);
  std::fflush(stderr);
  for (int r = 0; r < world_size; ++r) {
    std::vector<std::string> args = base;
    for (std::string a : {std::string("--tp-rank"), std::to_string(r), std::string("--tp-world"),
                          std::to_string(world_size), std::string("--tp-rendezvous"), rendezvous}) {
      args.push_back(std::move(a));
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid < 0) {
      stop_ranks(running);
      fail<Error>("--tp {}: cannot start rank {}: {}", world_size, r, std::strerror(errno));
    }
    if (pid == 0) {
      execv("/proc/self/exe", argv.data());
      std::fprintf(stderr, "dsattn: error: rank %d: cannot execute /proc/self/exe: %s\n", r,
                   std::strerror(errno));
      _exit(127);
    }
    running.push_back(pid);
    pid_of_rank.push_back(pid);
  }
  while (!running.empty()) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      stop_ranks(running);
      fail<Error>("--tp {}: waiting for the ranks failed: {}", world_size, std::strerror(errno));
    }
    const auto it = std::find(running.begin(), running.end(), pid);
    if (it == running.end()) continue;
    running.erase(it);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      const int rank = static_cast<int>(std::find(pid_of_rank.begin(), pid_of_rank.end(), pid) -
                                        pid_of_rank.begin());
      stop_ranks(running);
      fail<Error>("--tp {}: rank {} failed ({}); the other ranks were stopped", world_size, rank,
                  describe(status));
    }
  }
}

void write_file_by_rename(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
    if (!out) fail<Error>("cannot write {}", tmp);
  }
  std::filesystem::rename(tmp, path);
}

std::string wait_for_file(const std::string& path, double timeout_s, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (!std::filesystem::exists(path)) {
    if (std::chrono::steady_clock::now() > deadline) {
      if (timeout_s <= 0) fail<Error>("{} is missing ({})", what, path);
      fail<Error>("timed out after {} s waiting for {} ({})", timeout_s, what, path);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace dsattn::tools
