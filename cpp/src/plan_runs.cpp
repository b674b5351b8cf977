// The Plan's runs: checked entry points (every pointer that a run uses must be given) over
// the algorithm's Run, instantiated for every dtype.
#include <stdexcept>
#include <string>

#include "detail/dtypes.hpp"
#include "detail/run.hpp"

namespace fasth {

namespace {
// A run's pointers: each one that the run will read or write must be given.
void need(const void* p, bool used, const char* run, const char* name) {
  if (used && !p)
    throw std::invalid_argument(std::string("fasth: Plan::") + run + " needs " + name + " (null)");
}
// The factors' entry stride of a run: the plan's, or a caller's larger one.
index_t entry_stride(const detail::Layout& L, std::size_t given) {
  if (given != 0 && given < L.factors_stride)
    throw std::invalid_argument("fasth: factors_stride " + std::to_string(given) +
                                " is below the plan's " + std::to_string(L.factors_stride));
  return static_cast<index_t>(given ? given : L.factors_stride);
}
// The backward and the tangent: Y bound from V and the factors into the workspace's head,
// then `pass` over the rest of the workspace.
template <class T, class Args>
void run_bound(const detail::Layout& L, const Backend<T>& be, const Args& a,
               void (detail::Run<T>::*pass)(const Args&) const) {
  const detail::Run<T> r{L, {be}, entry_stride(L, a.factors_stride)};
  r.bind_y(a.V, a.factors, a.workspace, false);
  Args rest = a;
  rest.workspace = a.workspace + L.y_head;
  (r.*pass)(rest);
}
}  // namespace

template <class T>
void Plan::check_forward(const Forward<T>& a, const char* run, bool out) const {
  const bool v = L_->bv > 0 && L_->d > 0 && L_->k > 0, x = L_->B > 0 && L_->d > 0 && L_->n > 0;
  need(a.V, v, run, "V");
  need(a.tau, v && L_->kind == Kind::lapack, run, "tau");
  need(a.factors, factors_size() > 0, run, "factors");
  need(a.workspace, workspace_size(Pass::forward) > 0, run, "workspace");
  need(a.X, out && a.out && x && L_->op == Op::apply, run, "X");
}

// Each run's workspace: its head holds Y where bind_y normalises V into it; the rest is
// carved by the run.
template <class T>
void Plan::factors(const Backend<T>& be, const Forward<T>& a) const {
  check_forward(a, "factors", false);
  const detail::Run<T> r{*L_, {be}, entry_stride(*L_, a.factors_stride)};
  r.factors(a.V, a.tau, a.factors, a.workspace + L_->y_head);
}

template <class T>
void Plan::forward_with(const Backend<T>& be, const Forward<T>& a) const {
  check_forward(a, "forward_with", true);
  need(a.out, L_->B > 0 && L_->d > 0 && L_->n > 0, "forward_with", "out");
  const detail::Run<T> r{*L_, {be}, entry_stride(*L_, a.factors_stride)};
  r.bind_y(a.V, a.factors, a.workspace, false);
  r.forward_with(a.factors, a.X, a.out, a.workspace + L_->y_head, a.tape);
}

template <class T>
void Plan::forward(const Backend<T>& be, const Forward<T>& a) const {
  check_forward(a, "forward", true);
  const detail::Run<T> r{*L_, {be}, entry_stride(*L_, a.factors_stride)};
  if (L_->op == Op::matrix && a.out && L_->B > 0 && L_->d > 0 && L_->k > 0 && r.small())
    return r.small_factors(a.V, a.tau, a.factors, a.out, a.workspace + L_->y_head);  // one call
  r.factors(a.V, a.tau, a.factors, a.workspace + L_->y_head);
  if (a.out) r.forward_with(a.factors, a.X, a.out, a.workspace + L_->y_head, a.tape);
}

template <class T>
void Plan::backward(const Backend<T>& be, const Backward<T>& a) const {
  const bool v = L_->bv > 0 && L_->d > 0 && L_->k > 0, x = L_->B > 0 && L_->d > 0 && L_->n > 0;
  need(a.V, v, "backward", "V");
  need(a.factors, v && x, "backward", "factors");
  need(a.grad, v && x, "backward", "grad");
  need(a.saved, v && x && L_->reads_saved() && !(a.tape && L_->tape_size), "backward", "saved");
  need(a.dV, L_->bv > 0 && L_->d > 0 && L_->dV.cols > 0, "backward", "dV");
  need(a.dtau, v && L_->kind == Kind::lapack, "backward", "dtau");
  need(a.workspace, workspace_size(Pass::backward) > 0, "backward", "workspace");
  run_bound(*L_, be, a, &detail::Run<T>::backward);
}

template <class T>
void Plan::tangent(const Backend<T>& be, const Tangent<T>& a) const {
  // Complex tangents (conjugates in the T and normalisation terms) are not derived yet.
  if (is_complex_v<T>)
    throw std::invalid_argument("fasth: forward mode (tangent) takes real arrays only so far");
  const bool v = L_->bv > 0 && L_->d > 0 && L_->k > 0, x = L_->B > 0 && L_->d > 0 && L_->n > 0;
  need(a.V, v && x, "tangent", "V");
  need(a.factors, v && x, "tangent", "factors");
  need(a.X, v && x && L_->op == Op::apply, "tangent", "X");
  need(a.dout, x, "tangent", "dout");
  need(a.workspace, workspace_size(Pass::tangent) > 0, "tangent", "workspace");
  run_bound(*L_, be, a, &detail::Run<T>::tangent);
}

#define FASTH_INSTANTIATE(T)                                                       \
  template void Plan::factors<T>(const Backend<T>&, const Forward<T>&) const;      \
  template void Plan::forward_with<T>(const Backend<T>&, const Forward<T>&) const; \
  template void Plan::forward<T>(const Backend<T>&, const Forward<T>&) const;      \
  template void Plan::backward<T>(const Backend<T>&, const Backward<T>&) const;    \
  template void Plan::tangent<T>(const Backend<T>&, const Tangent<T>&) const;

FASTH_FOR_EACH_DTYPE(FASTH_INSTANTIATE)
#undef FASTH_INSTANTIATE

}  // namespace fasth
