/** One value a device or backend reports for metrics (a counter or a gauge), with labels beside its device's. */
export interface Sample {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  value: number;
  labels?: Record<string, string>;
}
