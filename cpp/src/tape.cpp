// The tape of a householder blockwise forward (Layout::tape_size): where each block's input and
// products lie in it, and its alignment gaps zeroed.

#include "detail/dtypes.hpp"
#include "detail/run.hpp"

namespace fasth::detail {

TapeParts tape_parts(const Layout& L) {  // as Run::tape_input and tape_product lay it out
  const std::size_t in = sz(L.B) * sz(L.d) * sz(L.n), pr = sz(L.B) * sz(L.m) * sz(L.n);
  return {round_up(in), round_up(pr), in, pr};
}

std::size_t tape_elements(const Layout& L) {
  const TapeParts tp = tape_parts(L);
  return sz(L.nb) * (tp.input + 2 * tp.product);
}

// The tape of a forward (see Layout::tape_size), in aligned parts: block s's input S_s (laid
// out as out is), W1_s = Y^T S_s and W2_s = op(T) W1_s.
template <class T>
M<T> Run<T>::tape_input(const Lanes& ln, T* tape, index_t s) const {
  return lane(ln, tape + s * static_cast<index_t>(tape_parts(L).input));
}
template <class T>
M<T> Run<T>::tape_product(const Lanes& ln, T* tape, index_t s, int which) const {
  const TapeParts tp = tape_parts(L);
  return products(ln, tape + L.nb * tp.input + (2 * s + which) * tp.product);
}

// The gaps that align a tape's parts, zeroed: a tape is an output (torch.compile's checks
// compare it whole), every element written.
template <class T>
void Run<T>::zero_tape_gaps(T* tape) const {
  const TapeParts tp = tape_parts(L);
  const index_t in = static_cast<index_t>(tp.input_used);
  const index_t pr = static_cast<index_t>(tp.product_used);
  const index_t pi = static_cast<index_t>(tp.input), pp = static_cast<index_t>(tp.product);
  if (pi > in) o.set(1, pi - in, L.nb, T(0), T(0), M<T>{tape + in, pi, false, 0});
  if (pp > pr) o.set(1, pp - pr, 2 * L.nb, T(0), T(0), M<T>{tape + L.nb * pi + pr, pp, false, 0});
}

#define FASTH_INSTANTIATE(T)                                                \
  template M<T> Run<T>::tape_input(const Lanes&, T*, index_t) const;        \
  template M<T> Run<T>::tape_product(const Lanes&, T*, index_t, int) const; \
  template void Run<T>::zero_tape_gaps(T*) const;

FASTH_FOR_EACH_DTYPE(FASTH_INSTANTIATE)
#undef FASTH_INSTANTIATE

}  // namespace fasth::detail
