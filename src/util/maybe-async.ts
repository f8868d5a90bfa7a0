/** Values that may be there at once or come later, handled without a microtask when at once. */

export type Maybe<T> = T | PromiseLike<T>;

function isPromiseLike<T>(v: Maybe<T>): v is PromiseLike<T> {
  return typeof (v as PromiseLike<T> | null)?.then === 'function';
}

/** `f` of `r`: at once when `r` is a value, else a promise of it once `r` settles. */
export function then<T, U>(r: Maybe<T>, f: (v: T) => U): U | Promise<Awaited<U>> {
  // A promise's result is never itself a promise (it resolves to what `f`'s promise gives).
  return isPromiseLike(r) ? (Promise.resolve(r).then(f) as Promise<Awaited<U>>) : f(r);
}
