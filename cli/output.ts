/** Prints rows as an aligned table for people, or JSON for scripts (--json). */
export function printTable(rows: Array<Record<string, string | number>>, columns: string[]): void {
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => String(r[c] ?? '').length)));
  const line = (cells: string[]) => cells.map((cell, i) => cell.padEnd(widths[i])).join('  ').trimEnd();
  console.log(line(columns.map((c) => c.toUpperCase())));
  for (const row of rows) console.log(line(columns.map((c) => String(row[c] ?? ''))));
}

export function printJson(value: unknown): void {
  console.log(JSON.stringify(value, null, 2));
}
