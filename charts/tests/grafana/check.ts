// Type-checks the Warren dashboard against Grafana's published schema (@grafana/schema):
// the dashboard model, and each panel's options and custom field config against its panel
// plugin's own types. `npm run check` (charts/tests/test_chart.py runs it); any error fails.
import type { Dashboard, Panel, RowPanel } from '@grafana/schema';
import type * as StatCfg from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as TimeSeriesCfg from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import board from './dashboard.gen';

// Grafana's types use TypeScript enums, the JSON has their values: `Json<T>` is `T` with every
// string enum replaced by the union of its values and arrays made readonly (`as const`).
type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends readonly (infer U)[]
      ? readonly Json<U>[]
      : T extends object
        ? { readonly [K in keyof T]: Json<T[K]> }
        : T;

export const dashboard: Json<Dashboard> = board;

// Panels by type, with the options and custom field config of their plugin.
// (`Panel`'s own `options` is an open record: the plugin's `Options` type is applied here.)
type TypedPanel<Type extends string, Options, Custom> = Json<Omit<Panel<Options, Custom>, 'type' | 'options'>> & {
  readonly type: Type;
  readonly options?: Json<Options>;
};
type KnownPanel =
  | TypedPanel<'stat', StatCfg.Options, Record<string, never>>
  | TypedPanel<'timeseries', TimeSeriesCfg.Options, TimeSeriesCfg.FieldConfig>
  | (Json<RowPanel> & { readonly type: 'row' });

export const panels: readonly KnownPanel[] = board.panels;
