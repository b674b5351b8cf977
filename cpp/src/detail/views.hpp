// Matrix views over raw storage, and the iteration of a call over up to three batch levels.
#pragma once

#include <algorithm>
#include <stdexcept>
#include <type_traits>

#include "detail/layout.hpp"

namespace fasth::detail {

// A logical matrix over column-major storage: t ? S^T : S, S with leading dimension ld;
// batch entries bs apart (0: one matrix shared by the batch).
template <class T>
struct M {
  T* p;
  index_t ld;
  bool t;
  index_t bs;
  M cols(index_t c) const { return {p + c * (t ? 1 : ld), ld, t, bs}; }
  M rows(index_t r) const { return {p + r * (t ? ld : 1), ld, t, bs}; }
};

template <class T>
M<const T> in(M<T> v) {
  return {v.p, v.ld, v.t, v.bs};
}

template <class T>
Strided<T> strided(M<T> v) {
  return v.t ? Strided<T>{v.p, v.ld, 1, v.bs} : Strided<T>{v.p, 1, v.ld, v.bs};
}

template <class T>
Strided<T> strided(const Mat3& m, T* p) {
  return {p, m.rs, m.cs, m.bs};
}

template <class T>
M<T> buffer(T* p, index_t rows, index_t bs) {  // contiguous column-major, rows x anything
  return {p, std::max<index_t>(rows, 1), false, bs};
}

// The storage view of a strided batch of matrices, column-major or transposed, when there is
// one (ok == false otherwise).
template <class T>
M<T> storage_view(const Mat3& m, T* p, bool& ok) {
  const index_t r = std::max<index_t>(m.rows, 1), c = std::max<index_t>(m.cols, 1);
  ok = true;
  if (m.rows == 0 || m.cols == 0) return {p, r, false, m.bs};
  if ((m.rs == 1 || m.rows <= 1) && (m.cols <= 1 || m.cs >= r))
    return {p, m.cols <= 1 ? r : m.cs, false, m.bs};
  if ((m.cs == 1 || m.cols <= 1) && (m.rows <= 1 || m.rs >= c))
    return {p, m.rows <= 1 ? c : m.rs, true, m.bs};
  ok = false;
  return {p, r, false, m.bs};
}

// The BLAS view: the storage view, except that a complex matrix stored transposed has none:
// BLAS conjugates only along with a transpose, so every complex operand of a product is
// column-major (the runs copy the caller's arrays that are not).
template <class T>
M<T> view(const Mat3& m, T* p, bool& ok) {
  M<T> v = storage_view(m, p, ok);
  if (is_complex_v<std::remove_const_t<T>> && v.t) ok = false;
  return v;
}

template <class T>
M<T> view(const Mat3& m, T* p) {
  bool ok;
  M<T> v = view(m, p, ok);
  if (!ok) throw std::logic_error("fasth: an output the plan laid out is not BLAS-addressable");
  return v;
}

template <class T>
M<T> settable(const Mat3& m, T* p) {  // for set, which takes either orientation
  bool ok;
  M<T> v = storage_view(m, p, ok);
  if (!ok) throw std::logic_error("fasth: an output the plan laid out is not addressable");
  return v;
}


// One level of a batch of up to three levels, for the operands of one call: n entries,
// each operand's pointer stepping by its own stride.
struct Level {
  index_t n;
  index_t s0, s1;
};

// Calls f(off0, off1, count, stride0, stride1) for every entry of the levels, with the
// largest level as the batch of each call and the others looped.
template <class F>
void each(Level a, Level b, Level c, F&& f) {
  Level lv[3] = {a, b, c};
  std::sort(lv, lv + 3, [](const Level& x, const Level& y) { return x.n > y.n; });
  if (lv[0].n <= 0 || lv[1].n <= 0 || lv[2].n <= 0) return;
  for (index_t i = 0; i < lv[1].n; ++i)
    for (index_t j = 0; j < lv[2].n; ++j)
      f(i * lv[1].s0 + j * lv[2].s0, i * lv[1].s1 + j * lv[2].s1, lv[0].n, lv[0].s0, lv[0].s1);
}

}  // namespace fasth::detail
