// One process per GPU for tensor parallelism: `dsattn run --tp N` and `dsattn bench --tp N` start
// N copies of this executable, each with the arguments the command was given plus hidden ones
// naming its rank, and wait for them; if one fails, the others are stopped.
#pragma once

#include <string>

namespace dsattn::tools {

// A directory only this user can enter (mkdtemp under $TMPDIR or /tmp), removed with everything
// in it when the object goes.
class PrivateDir {
 public:
  PrivateDir();
  ~PrivateDir();
  PrivateDir(const PrivateDir&) = delete;
  PrivateDir& operator=(const PrivateDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Starts `world_size` ranks at once: this executable (/proc/self/exe) with the command line it was
// started with (/proc/self/cmdline) followed by --tp-rank r --tp-world world_size
// --tp-rendezvous `rendezvous`, and waits for every one. Throws Error naming the first rank that
// exited non-zero or was killed, after stopping the others (SIGTERM, then SIGKILL).
void launch_ranks(int world_size, const std::string& rendezvous);

// Writes `text` to `path` through a temporary file and a rename, so that a reader polling for
// `path` never sees it half-written.
void write_file_by_rename(const std::string& path, const std::string& text);
// Waits up to `timeout_s` seconds (0: not at all) for `path` to exist and returns its contents;
// throws Error naming `what` when it does not appear.
std::string wait_for_file(const std::string& path, double timeout_s, const std::string& what);

}  // namespace dsattn::tools
