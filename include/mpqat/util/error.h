// Typed exceptions thrown by library code. Only main() turns them into an exit code:
//   InputError / NotImplementedError -> 2 (the user's input or request is at fault)
//   Error (and anything else)         -> 1 (runtime failure)
// Messages are one line, name the input at fault and say what would be accepted.
#pragma once

#include <stdexcept>
#include <string>

namespace mpqat {

// A runtime failure that is not the user's fault (I/O error, numerical failure, peer died).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Bad input from the user: a corrupt file, a wrong recipe key, an infeasible budget,
// a shape that does not divide. Exit code 2.
class InputError : public Error {
 public:
  explicit InputError(const std::string& msg) : Error(msg) {}
};

// A feature that exists in the interface but is not built yet. Exit code 2.
class NotImplementedError : public Error {
 public:
  explicit NotImplementedError(const std::string& what)
      : Error(what + " is not implemented yet") {}
};

// A failure in the distributed runtime (peer died, timeout, bad environment). Exit code 1.
class DistributedError : public Error {
 public:
  explicit DistributedError(const std::string& msg) : Error(msg) {}
};

}  // namespace mpqat
